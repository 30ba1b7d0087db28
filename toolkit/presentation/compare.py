"""Runs side by side: what a rerun, a new fine-tune or a new release changed.

One implementation for both pages that put runs together: :func:`~slmops.toolkit.domain.deployment_choice.side_by_side` is the
per-precision table of any number of runs (a sweep's page, and the top of a comparison), and
:func:`compare_runs` adds what only two runs have: parameters, inputs and versions that
differ, and every figure and verdict with its delta. Timing deltas are judged against the
runs' own measured spread: a change inside the noise is labelled so, never as a regression.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.core.artifacts import read_json
from slmops.toolkit.core.errors import InvalidOptionError
from slmops.toolkit.domain.deployment_choice import (
    NOT_JUDGED,
    TYPICAL_PROMPT,
    RunFigures,
    judge_timing,
    recommend,
    side_by_side,
)
from slmops.toolkit.domain.provenance import RunRecord, differences, machine_differences, read_run_record
from slmops.toolkit.domain.results.bench import BenchRow
from slmops.toolkit.domain.results.checklist import QualityRecord
from slmops.toolkit.domain.results.conversion import read_conversions
from slmops.toolkit.domain.results.deployment import NOT_MEASURED, PrecisionFigures, TimingJudgement
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.domain.verdicts import (
    Status,
)
from slmops.toolkit.presentation.render import render_page
from slmops.toolkit.stages import bench
from slmops.toolkit.stages.checklist import read_report

#: Quality figures a comparison gates on, and how far each may move the wrong way by default:
#: top-1 agreement may drop and KL divergence rise by that much (absolute), perplexity rise by
#: that share (relative).
FAIL_ON = {"top1_agreement": 0.02, "kl_divergence": 0.05, "perplexity": 0.05}

#: The version of ``compare.json`` :func:`write_comparison` writes (1: before it was recorded, quality figures
#: named ``top1`` and ``kl`` and the summary's agreement ``top1_vs_fp32``; 2: each timing's judgement in the row
#: itself; 3: under the row's ``judgement``).
SCHEMA_VERSION = 3

#: The fields of a version-2 timing row that are its judgement's.
_JUDGEMENT = tuple(f.name for f in fields(TimingJudgement))

_IGNORED_PARAMS = {"run_dir", "interactive"}


def _precisions(run: Path, bench_rows: list[BenchRow]) -> dict[str, str]:
    """Each registered model's precision, read from the run's ``registered.json`` and its benchmark rows.

    Runs line up by precision whatever their models were named; a model neither file knows
    keeps its own name as its label.
    """
    known = {row.model: row.precision for row in bench_rows if row.precision}
    if (run / "registered.json").is_file():
        known.update({m.name: m.precision for m in read_registered(run / "registered.json")})
    return known


def load_run(run_dir: str | os.PathLike[str]) -> RunFigures:
    """Read a run folder's result files (any that are missing are simply empty)."""
    run = Path(run_dir)
    manifests = read_conversions(run / "models" / "convert.json")
    sizes = {m.precision: m.size_mb for m in manifests}
    ratios = {m.precision: m.size_ratio_vs_fp32 for m in manifests}
    report = bench.read_results(run / "bench.json")
    rows = bench.rows_for(report, None) if report is not None else []
    precisions = _precisions(run, rows)
    quality: dict[str, QualityRecord] = {}
    verdicts = {}
    tests = read_report(run / "test.json")
    for model in tests.models if tests is not None else []:
        precision = precisions.get(model.model, model.model)
        for check in model.checks:
            verdicts[(precision, str(check.check), check.case)] = str(check.verdict)
        if model.quality is not None:
            quality[precision] = model.quality
    timings = {(row.precision, row.engine, row.target_prompt_tokens, row.target_gen_tokens, row.threads): row
               for row in rows}
    headline: dict[str, BenchRow] = {row.precision: row for row in bench.headline_rows(rows)}
    first_token: dict[str, BenchRow] = {}
    for row in rows:
        if row.engine == "foundry-local" and not bench.timed_too_few(row):
            best = first_token.get(row.precision)
            if best is None or abs(row.target_prompt_tokens - TYPICAL_PROMPT) < abs(
                    best.target_prompt_tokens - TYPICAL_PROMPT):
                first_token[row.precision] = row
    isa = report.metadata.isa if report is not None else {}
    adopted = next((m.recipe for m in manifests if m.precision == "int4"), "")
    return RunFigures(run.name, read_json(run / "params.json", {}) or {}, read_run_record(run),
                      sizes, ratios, quality, verdicts, timings, headline, first_token, isa, adopted)


@dataclass(frozen=True)
class ParamChange:
    """A parameter that differs between two runs.

    Attributes:
        parameter: Its name in ``params.json``.
        a: Run a's value (``absent`` where the run lacks it).
        b: Run b's value.
    """

    parameter: str
    a: Any
    b: Any


@dataclass(frozen=True)
class SizeChange:
    """One precision's size on disk in two runs (MB, 10^6 bytes).

    Attributes:
        precision: The precision.
        a: Run a's size (None: not built there).
        b: Run b's size.
        delta: b less a (``–`` when one run lacks it).
    """

    precision: str
    a: float | None
    b: float | None
    delta: float | str


@dataclass(frozen=True)
class QualityChange:
    """One quality figure against FP32 (``top1_agreement``, ``kl_divergence``, ``perplexity``) in two runs.

    Attributes:
        precision: The precision.
        figure: The figure (a key of :data:`FAIL_ON`).
        a: Run a's figure (None: not measured there).
        b: Run b's figure.
        delta: b less a (``–`` when one run lacks it).
        judged: ``within threshold``, ``worse by more than ...``, or ``only in a/b``.
    """

    precision: str
    figure: str
    a: float | None
    b: float | None
    delta: float | str
    judged: str


@dataclass(frozen=True)
class VerdictChange:
    """One checklist verdict in two runs.

    Attributes:
        precision: The precision.
        check: The checklist item.
        case: The case.
        a: Run a's verdict as shown (``pass``, ``FAIL``, ``inconclusive: rerun``, ``–``).
        b: Run b's.
        change: ``same``, ``worse``, ``better``, ``only in a/b`` or ``inconclusive, not counted``.
    """

    precision: str
    check: str
    case: str
    a: str
    b: str
    change: str


@dataclass(frozen=True)
class TimingChange:
    """One timing of the same bench row in two runs, judged against both runs' spread.

    Attributes:
        precision: The precision.
        engine: The engine.
        prompt: Prompt tokens asked.
        gen: Generated tokens asked.
        threads: Intra-op threads.
        judgement: The figure in both runs and how its change was judged.
    """

    precision: str
    engine: str
    prompt: int
    gen: int
    threads: int
    judgement: TimingJudgement

    def table_row(self) -> dict[str, object]:
        """The row as a table shows it: the bench row's key, then the judgement's fields."""
        key = {name: value for name, value in asdict(self).items() if name != "judgement"}
        return {**key, **asdict(self.judgement)}


def _names_of_version_1(data: dict) -> dict:
    """A version-1 ``compare.json``'s quality figures (``top1``, ``kl``) and summary agreement (``top1_vs_fp32``)
    under today's names."""
    names = {"top1": "top1_agreement", "kl": "kl_divergence"}
    quality = [{**row, "figure": names.get(row.get("figure"), row.get("figure"))}
               for row in data.get("quality", []) if isinstance(row, dict)]
    summary = [{**{k: v for k, v in row.items() if k != "top1_vs_fp32"},
                "top1_agreement": row.get("top1_vs_fp32", row.get("top1_agreement", NOT_MEASURED))}
               for row in data.get("summary", []) if isinstance(row, dict)]
    return {**data, "quality": quality, "summary": summary}


@dataclass(frozen=True)
class Comparison:
    """Two runs compared (``compare.json``); :attr:`regressions` is what makes ``slmops compare`` exit 1.

    Attributes:
        a: The baseline run's folder name.
        b: The judged run's folder name (``b`` is judged against ``a``).
        params: Each parameter that differs.
        inputs: Inputs that differ (source model, cases file, seed, packages), in words.
        machine: How the machines differ (CPU, cores, memory), in words; timings then compare machines too.
        summary: Per run and precision: size, size against FP32, checks passed, top-1 agreement, decode speed,
            time to first token, peak RSS.
        sizes: Per precision, its size in both runs.
        quality: Per precision and figure, how it moved and how that was judged.
        verdicts: Every checklist verdict in both runs, changes first.
        timings: Each timing in both runs, judged against both runs' measured spread (within two standard
            deviations of the difference: "same, within noise").
        regressions: Each regression in words (empty: ``passed``).
        recommendations: What each run recommends deploying: run name to the recommendation's sentence.
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "compare.json"

    a: str
    b: str
    params: list[ParamChange]
    inputs: list[str]
    machine: list[str]
    summary: list[PrecisionFigures]
    sizes: list[SizeChange]
    quality: list[QualityChange]
    verdicts: list[VerdictChange]
    timings: list[TimingChange]
    regressions: list[str]
    recommendations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Version 1's quality figures (``top1``, ``kl``) and summary agreement (``top1_vs_fp32``) under today's
        names; versions 1 and 2's timings, which held their judgement's fields themselves, with them under
        ``judgement``."""
        if version == 1:
            data = _names_of_version_1(data)
        timings = [{**{k: v for k, v in row.items() if k not in _JUDGEMENT},
                    "judgement": {k: row[k] for k in _JUDGEMENT if k in row}}
                   if isinstance(row, dict) and "judgement" not in row else row for row in data.get("timings", [])]
        return {**data, "timings": timings}

    @property
    def passed(self) -> bool:
        """No verdict got worse and no quality figure moved past its threshold."""
        return not self.regressions

    @property
    def slower(self) -> list[str]:
        """Timings of b slower than a's beyond both runs' spread, in words (a warning: they are not gated on)."""
        return [f"{row.precision} {row.engine} {t.figure} {t.a:.4g} -> {t.b:.4g} "
                f"({t.change_pct:+}%, beyond the noise of {t.noise})" if isinstance(t.change_pct, int | float)
                else f"{row.precision} {row.engine} {t.figure} {t.a} -> {t.b}"
                for row, t in ((row, row.judgement) for row in self.timings) if t.judged == "slower"]

    @property
    def status(self) -> Status:
        """Fail on a regression, warn on a timing slower beyond the noise, else pass."""
        return Status.FAIL if self.regressions else Status.WARN if self.slower else Status.PASS

    @property
    def headline(self) -> str:
        """The comparison in one line, agreeing with every table under it.

        Example:
            >>> compare_runs(load_run("a"), load_run("b")).headline
            'WARN: no checklist verdict got worse and no quality figure moved past its threshold, but 1 timing is ...'
        """
        if self.regressions:
            return (f"FAIL: {len(self.regressions)} regressions: " + "; ".join(self.regressions)
                    + (f". Also slower beyond the noise: {'; '.join(self.slower)}" if self.slower else "") + ".")
        clean = "no checklist verdict got worse and no quality figure moved past its threshold"
        if self.slower:
            return (f"WARN: {clean}, but {len(self.slower)} timing{'s are' if len(self.slower) > 1 else ' is'} "
                    f"slower beyond both runs' noise: {'; '.join(self.slower)}.")
        unjudged = sum(row.judgement.judged == NOT_JUDGED for row in self.timings)
        if unjudged:
            return (f"PASS: {clean}; {unjudged} timing{'s are' if unjudged > 1 else ' is'} not judged (a run measured "
                    "one repeat, so no spread to judge a change against: set repeats to 2 or more).")
        return f"PASS: {clean}, and no timing is slower beyond the noise."


def _delta(a: float | None, b: float | None) -> float | str:
    return round(b - a, 4) if a is not None and b is not None else "–"


_SHOWN = {"pass": "pass", "fail": "FAIL", "inconclusive": "inconclusive: rerun", None: "–"}


def compare_runs(a: RunFigures, b: RunFigures, fail_on: dict[str, float] | None = None) -> Comparison:
    """Compare run ``b`` with run ``a`` (the baseline).

    Args:
        fail_on: Thresholds of :data:`FAIL_ON` to override, by figure.

    Raises:
        InvalidOptionError: ``fail_on`` names a figure :data:`FAIL_ON` does not have.

    Example:
        >>> compare_runs(load_run("outputs/demo"), load_run("outputs/again")).regressions
        []
    """
    unknown = sorted(set(fail_on or {}) - set(FAIL_ON))
    if unknown:
        raise InvalidOptionError("fail_on", unknown[0], f"one of {', '.join(FAIL_ON)}")
    limits = {**FAIL_ON, **(fail_on or {})}
    regressions: list[str] = []
    params = [ParamChange(k, a.params.get(k, "absent"), b.params.get(k, "absent"))
              for k in sorted((set(a.params) | set(b.params)) - _IGNORED_PARAMS) if a.params.get(k) != b.params.get(k)]
    sizes = [SizeChange(p, a.sizes.get(p), b.sizes.get(p), _delta(a.sizes.get(p), b.sizes.get(p)))
             for p in dict.fromkeys([*a.sizes, *b.sizes])]
    quality = []
    for p in dict.fromkeys([*a.quality, *b.quality]):
        for figure, limit in limits.items():
            old, new = getattr(a.quality.get(p), figure, None), getattr(b.quality.get(p), figure, None)
            moved = ""
            if old is not None and new is not None:
                worse = {"top1_agreement": old - new, "kl_divergence": new - old, "perplexity": (new - old) / old if old else 0.0}[figure]
                if worse > limit:
                    moved = f"worse by more than {limit}" + (" (relative)" if figure == "perplexity" else "")
                    regressions.append(f"{p} {figure}: {old} -> {new} ({moved})")
            alone = "" if (old is None) == (new is None) else f"only in {'a' if new is None else 'b'}"
            quality.append(QualityChange(p, figure, old, new, _delta(old, new), moved or alone or "within threshold"))
    verdicts = []
    for key in dict.fromkeys([*a.verdicts, *b.verdicts]):
        old, new = a.verdicts.get(key), b.verdicts.get(key)
        change = ("same" if old == new else f"only in {'a' if new is None else 'b'}" if None in (old, new)
                  else "inconclusive, not counted" if "inconclusive" in (old, new)
                  else "worse" if new == "fail" else "better")
        if change == "worse":
            regressions.append(f"{key[0]} {key[1]}/{key[2]}: passed in {a.name}, fails in {b.name}")
        verdicts.append(VerdictChange(*key, _SHOWN[old], _SHOWN[new], change))
    order = {"worse": 0, "better": 1, "inconclusive, not counted": 2, "only in a": 2, "only in b": 2, "same": 3}
    verdicts.sort(key=lambda row: order[row.change])
    timings = [TimingChange(*key, judge_timing(figure, a.timings[key], b.timings[key]))
               for key in a.timings if key in b.timings for figure in ("decode_tps", "ttft_ms")]
    return Comparison(a.name, b.name, params, differences(a.record, b.record) if a.record and b.record else [],
                      machine_differences(a.record or RunRecord(), b.record or RunRecord()), side_by_side([("a: " + a.name, a), ("b: " + b.name, b)]),
                      sizes, quality, verdicts, timings, regressions,
                      {a.name: recommend(a).sentence, b.name: recommend(b).sentence})


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``compare.json`` (with its ``passed``, ``status`` and ``headline`` for a reader without the toolkit) and
    ``compare.html`` into ``out_dir``; return the page."""
    out = Path(out_dir)
    artifacts.write_json(out / "compare.json", {**codec.dump(comparison), "passed": comparison.passed,
                                              "status": str(comparison.status), "headline": comparison.headline})
    return artifacts.write_text(out / "compare.html", render_page("compare.html.j2", c=comparison))


def read_comparison(path: str | os.PathLike[str]) -> Comparison:
    """The comparison in a ``compare.json`` (any known version); its ``passed``, ``status`` and ``headline`` are
    computed again from its rows, as they were when it was written.

    Raises:
        InputError: no such file, or not JSON.
        ResultVersionError: written by a newer toolkit.
        RecordError: it does not hold a comparison.

    Example:
        >>> read_comparison("outputs/compare/compare.json").passed
        True
    """
    return codec.read(Comparison, path, missing=f"{path}: no such file; run `slmops compare RUN_A RUN_B` first.")
