"""The recommendation's and a comparison's rows: each precision's figures, its outcome, a timing judged.

Written into ``compare.json`` (:class:`~slmops.toolkit.presentation.compare.Comparison`) and printed by
``slmops recommend --json``; built by :mod:`slmops.toolkit.domain.deployment_choice`. A row that holds another
record (a precision's figures, a timing's judgement) is shown flat by a table: its ``table_row()``.

Version history of the recommendation (``slmops recommend --json``):

1. (no ``schema_version``) each row held the figures' fields itself (no ``run``), then ``ttft_typical_ms``,
   ``outcome`` and ``verdict``; still loaded (:meth:`Recommendation.upgrade`).
2. each row's figures under ``figures`` (a :class:`PrecisionFigures`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import ClassVar

from slmops.toolkit.domain.verdicts import PairedComparison

#: The version of the recommendation :func:`~slmops.toolkit.domain.deployment_choice.recommend` makes.
SCHEMA_VERSION = 2

#: A figure a run has not measured (or a text in its place: ``reference``) shows as this.
NOT_MEASURED = "–"


@dataclass(frozen=True)
class PrecisionFigures:
    """One run's figures for one precision: a row of :func:`~slmops.toolkit.domain.deployment_choice.side_by_side` (a figure not measured is ``–``).

    Attributes:
        run: The run's label.
        precision: The precision (``–`` for a run with none).
        size_mb: Size on disk, MB.
        x_fp32: Size over the FP32 build's.
        checks_passed: ``passed/checked`` (and how many were inconclusive).
        top1_agreement: Top-1 agreement with FP32 (``reference`` for FP32 itself).
        decode_tps: Headline decode speed, tokens/s.
        ttft_ms: Headline time to first token, ms.
        peak_rss_mib: Headline peak RSS, MiB.
    """

    run: str
    precision: str
    size_mb: float | str = NOT_MEASURED
    x_fp32: float | str = NOT_MEASURED
    checks_passed: str = NOT_MEASURED
    top1_agreement: float | str = NOT_MEASURED
    decode_tps: float | str = NOT_MEASURED
    ttft_ms: float | str = NOT_MEASURED
    peak_rss_mib: float | str = NOT_MEASURED


class Outcome(StrEnum):
    """Where a precision stands in a recommendation (the row's ``outcome``; its ``verdict`` says it in words)."""

    RECOMMENDED = "recommended"
    FAILED = "failed"  # failed a check
    LARGER = "larger"
    SLOWER = "slower"
    NOT_CHECKED = "not_checked"


@dataclass(frozen=True)
class PrecisionOutcome:
    """One precision in a :class:`Recommendation`: its figures, outcome and verdict.

    Attributes:
        figures: Its figures (the run's label left empty: a recommendation is of one run).
        ttft_typical_ms: Time to first token at about :data:`~slmops.toolkit.domain.deployment_choice.TYPICAL_PROMPT` prompt tokens, ms.
        outcome: Where it stands (:class:`Outcome`).
        verdict: The outcome in words: recommended, or why it lost.
    """

    figures: PrecisionFigures
    ttft_typical_ms: float | str = NOT_MEASURED
    outcome: Outcome = Outcome.NOT_CHECKED
    verdict: str = ""

    @property
    def precision(self) -> str:
        """The precision."""
        return self.figures.precision

    def table_row(self) -> dict[str, object]:
        """The row as a table shows it: the figures after the precision (no run label), then outcome and verdict.

        Example:
            >>> list(PrecisionOutcome(PrecisionFigures("", "int4")).table_row())[:2]
            ['precision', 'size_mb']
        """
        figures = {name: value for name, value in asdict(self.figures).items() if name != "run"}
        return {**figures, "ttft_typical_ms": self.ttft_typical_ms, "outcome": self.outcome, "verdict": self.verdict}


def nest_figures(row: object, figure_names: tuple[str, ...]) -> object:
    """A version-1 row that held ``figure_names`` itself, with them under ``figures`` (a row of another shape as it is).

    Example:
        >>> nest_figures({"precision": "int4", "size_mb": 40.0, "verdict": "recommended"}, ("precision", "size_mb"))
        {'verdict': 'recommended', 'figures': {'run': '', 'precision': 'int4', 'size_mb': 40.0}}
    """
    if not isinstance(row, dict) or "figures" in row:
        return row
    rest = {name: value for name, value in row.items() if name not in figure_names}
    return {**rest, "figures": {"run": "", **{name: row[name] for name in figure_names if name in row}}}


@dataclass(frozen=True)
class Recommendation:
    """The precision to deploy from one run, its figures beside the alternatives', and why each lost.

    Attributes:
        choice: The recommended precision (None when every precision failed a check the others did not all fail).
        sentence: The decision in one line.
        rows: One per precision: its figures, its outcome and verdict.
        failed: Per precision that failed a check, which, in words (its verdict without "lost: ").
        paired: Each precision against FP32 per case family (the discordant counts, the test, its p-value
            and the difference it finds).
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "recommendation"

    choice: str | None
    sentence: str
    rows: list[PrecisionOutcome]
    failed: dict[str, str] = field(default_factory=dict)
    paired: list[PairedComparison] = field(default_factory=list)

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Version 1's rows, which held their figures themselves, with the figures under ``figures``."""
        names = tuple(f.name for f in fields(PrecisionFigures) if f.name != "run")
        return {**data, "rows": [nest_figures(row, names) for row in data.get("rows", [])]}


@dataclass(frozen=True)
class TimingJudgement:
    """One timing figure of two runs, judged against both runs' spread (:func:`~slmops.toolkit.domain.deployment_choice.judge_timing`).

    Attributes:
        figure: The :class:`~slmops.toolkit.domain.results.bench.BenchRow` field (``decode_tps`` or ``ttft_ms``).
        a: Run a's figure.
        b: Run b's figure.
        change_pct: b against a, % (``–`` when a is 0).
        noise: Two standard deviations of the difference.
        judged: ``faster``, ``slower``, ``same, within noise``, or why it was not judged.
    """

    figure: str
    a: float
    b: float
    change_pct: float | str
    noise: float
    judged: str
