"""The recommendation's and a comparison's rows: each precision's figures, its outcome, a timing judged.

Written into ``compare.json`` (:class:`~slmops.toolkit.presentation.compare.Comparison`) and printed by
``slmops recommend --json``; built by :mod:`slmops.toolkit.domain.deployment_choice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

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
    """One precision in a :class:`~slmops.toolkit.domain.deployment_choice.Recommendation`: its figures (as :class:`PrecisionFigures`), outcome and verdict.

    Attributes:
        precision: The precision.
        size_mb, x_fp32, checks_passed, top1_agreement, decode_tps, ttft_ms, peak_rss_mib: As :class:`PrecisionFigures`.
        ttft_typical_ms: Time to first token at about :data:`~slmops.toolkit.domain.deployment_choice.TYPICAL_PROMPT` prompt tokens, ms.
        outcome: Where it stands (:class:`Outcome`).
        verdict: The outcome in words: recommended, or why it lost.
    """

    precision: str
    size_mb: float | str = NOT_MEASURED
    x_fp32: float | str = NOT_MEASURED
    checks_passed: str = NOT_MEASURED
    top1_agreement: float | str = NOT_MEASURED
    decode_tps: float | str = NOT_MEASURED
    ttft_ms: float | str = NOT_MEASURED
    peak_rss_mib: float | str = NOT_MEASURED
    ttft_typical_ms: float | str = NOT_MEASURED
    outcome: Outcome = Outcome.NOT_CHECKED
    verdict: str = ""


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
