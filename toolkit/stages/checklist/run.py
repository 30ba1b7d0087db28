"""Running the checklist: every model's checks, the shared timing and quality work done once, and ``test.json``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InvalidOptionError
from slmops.toolkit.core.measure import timestamp
from slmops.toolkit.domain.results.checklist import (
    ChecklistReport,
    ControlResult,
    ModelReport,
    Thresholds,
)
from slmops.toolkit.domain.results.checklist_file import dump_report, load_report
from slmops.toolkit.domain.retention import with_retention
from slmops.toolkit.domain.run_params import DEFAULTS
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages.checklist.answers import case_checks, requests_of
from slmops.toolkit.stages.checklist.cases import load_cases
from slmops.toolkit.stages.checklist.edge import run_edge_cases
from slmops.toolkit.stages.checklist.memory import memory_check
from slmops.toolkit.stages.checklist.quality import quality_checks, quality_records
from slmops.toolkit.stages.checklist.timing import performance_checks


def run_checklist(
    name: str, *, cases: list[dict] | None = None, cache: str | Path | None = None, max_tokens: int = 48,
    seed: int = 0, requests: int = DEFAULTS.checklist_requests, lengths: list[int] | None = None,
    reference: str | None = None, thresholds: Thresholds | None = None, progress: bool = True,
) -> ModelReport:
    """Run the whole checklist against a registered model (greedy, ``seed`` recorded).

    Args:
        name: Registered model.
        cases: Domain/format cases (the bundled ones by default).
        cache: Foundry Local cache.
        max_tokens: Answer budget per case.
        seed: Seed for every request.
        requests: Requests of the memory check (0 skips it).
        lengths: Input lengths of the performance check (default: 64, x4, up to :data:`DECISIVE_LONG` or
            half the context; [] skips it); the shortest and the longest decide, the others draw the curve.
        reference: Registered FP32 model for the quality check, and the performance check's
            reference (timed interleaved with this model).
        thresholds: What passing means.
        progress: Show progress bars.

    Raises:
        InvalidOptionError: a count out of range (before the model is loaded).

    Example:
        >>> run_checklist("smollm2-int4", reference="smollm2-fp32").passed
        True
    """
    return run_checklists([name], cases=cases, cache=cache, max_tokens=max_tokens, seed=seed, requests=requests,
                          lengths=lengths, reference=reference, thresholds=thresholds, progress=progress)[0]


def _check_options(requests: object, max_tokens: object, lengths: object) -> None:
    if type(requests) is not int or requests < 0:
        raise InvalidOptionError("requests", requests, "a whole number >= 0 (0 skips the memory check)")
    if type(max_tokens) is not int or max_tokens < 1:
        raise InvalidOptionError("max_tokens", max_tokens, "a whole number >= 1")
    if lengths is not None and (not isinstance(lengths, list)
                                or any(type(n) is not int or n < 1 for n in lengths)):
        raise InvalidOptionError("lengths", lengths, "input lengths in tokens, each a whole number >= 1")


def _model_part(name: str, cases: list[dict], cache: str | Path | None, limits: Thresholds, max_tokens: int,
                seed: int, requests: int, progress: bool) -> dict:
    """One model's own checks (the cases, then the memory windows), with the model loaded once for them."""
    clock = _Clock()
    rss: list[float] = []
    generated: list[list] = []
    with LoadedModel(name, cache) as model:
        checks = case_checks(model, cases, limits, max_tokens, seed, progress, generated)
        sent = requests_of(cases)
        clock.lap("cases")
        if requests:
            checks.append(memory_check(model, requests, limits, seed, progress, rss))
            clock.lap("memory")
    return {"checks": checks, "rss": rss, "generated": generated, "requests": sent + len(rss), "clock": clock}


def run_checklists(names: list[str], *, reference: str | None = None, cases: list[dict] | None = None,
                   cache: str | Path | None = None, max_tokens: int = 48, seed: int = 0,
                   requests: int = DEFAULTS.checklist_requests, lengths: list[int] | None = None,
                   thresholds: Thresholds | None = None, progress: bool = True) -> list[ModelReport]:
    """The checklist for several models, with the work they share done once.

    Per model: the cases (domain, held-out, format, structured, stop, from one set of greedy
    answers), the memory windows and the edge cases. Across models: the performance check times
    every model and the reference interleaved, round by round
    (:func:`~slmops.toolkit.stages.checklist.timing.performance_checks`), and
    the quality check reads the reference's logits once for every model
    (:func:`~slmops.toolkit.runtimes.genai.agreement` with all of them).

    Args:
        names: Registered models (reports come back in this order).
        reference: The FP32 model: the quality check's reference, and the performance check's
            (timed alongside even when it is not among ``names``).
        cases, cache, max_tokens, seed, requests, lengths, thresholds, progress: As :func:`run_checklist`.

    Example:
        >>> [r.model for r in run_checklists(["smollm2-int4", "smollm2-fp32"], reference="smollm2-fp32")]
        ['smollm2-int4', 'smollm2-fp32']
    """
    _check_options(requests, max_tokens, lengths)
    limits = thresholds or Thresholds()
    cases = cases if cases is not None else load_cases()
    parts = {name: _model_part(name, cases, cache, limits, max_tokens, seed, requests, progress) for name in names}
    shared = _Clock()
    performance, curves, timed = ({}, {}, {}) if lengths == [] else performance_checks(
        names, reference, cache, lengths, limits, seed, progress)
    shared.lap("performance", len(names))
    candidates = [n for n in names if reference and n != reference]
    quality = quality_records(candidates, reference, cache) if candidates else {}
    shared.lap("quality", len(candidates) or 1)
    for name in names:
        part, clock = parts[name], parts[name]["clock"]
        if name in performance:
            part["checks"].append(performance[name])
        part["requests"] += timed.get(name, 0)
        clock.restart()
        part["checks"] += run_edge_cases(name, cache, limits.edge_timeout_s, seed)
        clock.lap("edge")
        clock.seconds["performance"] = shared.seconds.get("performance", 0.0)
        if name in quality:
            part["checks"] += quality_checks(name, quality[name], limits)
            clock.seconds["quality"] = shared.seconds["quality"]
    return [ModelReport(name, parts[name]["checks"], parts[name]["rss"], curves.get(name, {}), seed,
                        parts[name]["generated"], parts[name]["requests"], parts[name]["clock"].rounded(),
                        quality.get(name))
            for name in names]


class _Clock:
    """Wall seconds per part of the checklist (a shared part is split evenly between the models it served)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, part: str, shared_by: int = 1) -> None:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + (now - self._last) / shared_by
        self._last = now

    def restart(self) -> None:
        """Start the next part now (time since the last lap belonged to other models)."""
        self._last = time.perf_counter()

    def rounded(self) -> dict[str, float]:
        return {part: round(value, 1) for part, value in self.seconds.items()}




def write_report(reports: list[ModelReport], path: str | os.PathLike[str], thresholds: Thresholds | None = None,
                 control: ControlResult | None = None) -> ChecklistReport:
    """Write ``test.json`` (:class:`~slmops.toolkit.domain.results.checklist.ChecklistReport`) and return what was written.

    The ``retention`` checks are held to the control's answers here
    (:func:`~slmops.toolkit.domain.retention.with_retention`): what each build forgot.

    Example:
        >>> write_report(run_checklists(["smollm2-int4"]), "outputs/demo/test.json").passed
        True
    """
    limits = thresholds or Thresholds()
    # The general questions are held to the base's own answers (the control), once both are known.
    report = ChecklistReport(with_retention(list(reports), control, limits), limits, control, timestamp())
    artifacts.write_json(path, dump_report(report))
    return report


def read_report(path: str | os.PathLike[str]) -> ChecklistReport | None:
    """Read a run's ``test.json`` (any known version), or None when there is none.

    Raises:
        ResultVersionError: it was written by a newer toolkit.
    """
    data = artifacts.read_json(Path(path))
    return load_report(data, str(path)) if isinstance(data, dict) else None
