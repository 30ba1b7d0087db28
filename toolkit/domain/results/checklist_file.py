"""``test.json`` as written: the layout of the checklist's result file, read and written through the codec.

:func:`dump_report` and :func:`load_report` turn a :class:`~slmops.toolkit.domain.results.checklist.ChecklistReport`
into the file's content and back; the file is versioned here, in :class:`ChecklistFile`.

Version history of ``test.json``:

1. (no ``schema_version`` field) each check's ``threshold`` and ``value`` were sentences;
   still loaded: the sentences become ``criterion`` and ``detail``, the verdicts are kept, the
   measured figures, the quality record and the negative control are absent.
2. typed checks, a quality record per model, a typed negative control; the memory limit as
   ``thresholds.leak_mb_per_100`` (MiB).
3. the memory limit as ``thresholds.leak_mib_per_100`` (``_mib`` for memory, ``_mb`` only for
   10^6 bytes); a version-2 file's ``leak_mb_per_100`` still loads under the new name.
4. the performance check's ``value`` is what a long input adds per output token as a share of
   what it may add (unit ``ratio``, threshold 1), which a burst of load does not move; older files
   keep their difference in ms (unit ``ms``, threshold 0), which their checks carry.
5. the negative control's ``kept_from``: when its answers were asked, if they were read back from
   an earlier run of the same base build, cases and runtime (empty when asked in this run).
6. the ``retention`` check (general questions the base answers correctly, asked of every build),
   ``retention`` per model (retained, forgotten, answers given with a domain fact) and the control's
   ``retention_correct``, ``retention_total`` and ``domain_terms``; absent in older files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.domain.results.checklist import (
    SCHEMA_VERSION,
    Bound,
    ChecklistReport,
    CheckResult,
    ControlResult,
    ModelReport,
    QualityRecord,
    RetentionRecord,
    Thresholds,
    Unit,
    Verdict,
    verdict_of,
)


@dataclass(frozen=True)
class RateSummary:
    """A pass rate in ``test.json``'s summary.

    Attributes:
        passed: Cases passed (None when the rate is not a share of cases).
        total: Cases, rounds, windows or requests it was computed from.
        share: The rate (None when nothing could be measured).
    """

    passed: int | None
    total: int
    share: float | None


@dataclass(frozen=True)
class ModelSummary:
    """One model's line of ``test.json``'s summary.

    Attributes:
        passed: Checks passed.
        total: Checks.
        failed: ``check/case`` of each failed check.
        inconclusive: ``check/case`` of each inconclusive check.
        rates: Each pass-rate check (its ``<check>-overall`` case), by check.
        requests: Requests the checklist sent to the model.
        seconds: Wall time of its share of each part of the checklist, s.
    """

    passed: int = 0
    total: int = 0
    failed: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)
    rates: dict[str, RateSummary] = field(default_factory=dict)
    requests: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSeries:
    """The series behind one model's plots (see :class:`ModelReport`).

    Attributes:
        rss_mib: Process RSS after each request of the memory check, MiB.
        ms_per_token: Input tokens to milliseconds per output token.
        seed: The seed every request used.
        generated: ``[case id, finish reason, completion tokens]`` of every case answer.
    """

    rss_mib: list[float] = field(default_factory=list)
    ms_per_token: dict[int, float] = field(default_factory=dict)
    seed: int = 0
    generated: list[list] = field(default_factory=list)


@dataclass(frozen=True)
class RetentionEntry:
    """A :class:`RetentionRecord` as ``test.json`` holds it, with its counts.

    Attributes:
        reference: See :class:`RetentionRecord`.
        retained: See :class:`RetentionRecord`.
        forgotten: See :class:`RetentionRecord`.
        domain_answers: See :class:`RetentionRecord`.
        retained_count: How many were retained.
        forgotten_count: How many were forgotten.
    """

    reference: str
    retained: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    domain_answers: dict[str, str] = field(default_factory=dict)
    retained_count: int = 0
    forgotten_count: int = 0


@dataclass(frozen=True)
class ChecklistFile:
    """``test.json`` as written: the verdict, a summary per model, every check, the series, the control.

    Attributes:
        passed: No model failed a check.
        summary: Each model's counts, failures and rates.
        thresholds: What passing meant.
        checks: Every check of every model.
        series: Each model's series.
        quality: Each compared model's figures against the FP32 reference.
        retention: Each model's retention record.
        control: The negative control, if one ran.
        timestamp: When it was written (UTC, ISO 8601).
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "test.json"

    passed: bool = True
    summary: dict[str, ModelSummary] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    checks: list[CheckResult] = field(default_factory=list)
    series: dict[str, ModelSeries] = field(default_factory=dict)
    quality: dict[str, QualityRecord] = field(default_factory=dict)
    retention: dict[str, RetentionEntry] = field(default_factory=dict)
    control: ControlResult | None = None
    timestamp: str = ""

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """A file of an older version (see the module's history) in the current shape."""
        thresholds = dict(data.get("thresholds") or {})
        if "leak_mb_per_100" in thresholds:  # versions 1-2 (it was MiB)
            thresholds["leak_mib_per_100"] = thresholds.pop("leak_mb_per_100")
        # Only the current summary's rates are read back (as the summary is only read for requests and seconds).
        summary = {name: {**row, "rates": {k: v for k, v in (row.get("rates") or {}).items() if isinstance(v, dict)}}
                   for name, row in (data.get("summary") or {}).items() if isinstance(row, dict)}
        data = {**data, "thresholds": thresholds, "summary": summary}
        if version > 1:
            return data
        # Version 1: the sentences kept as words, the verdicts kept, no figures, no quality record, no control.
        return {**data, "quality": {}, "control": None, "checks": [_check_of_version_1(c) for c in data.get("checks", [])],
                "series": {name: {**s, "rss_mib": s.get("rss_mb", [])} for name, s in (data.get("series") or {}).items()}}


def _check_of_version_1(data: dict) -> dict:
    """A check of a version-1 ``test.json``: the sentences kept as words, the verdict kept, no figures."""
    verdict = data.get("verdict") or verdict_of(bool(data.get("passed")))
    return {"model": str(data["model"]), "check": data["check"], "case": str(data["case"]), "value": None,
            "unit": Unit.NONE, "threshold": None, "bound": Bound.AT_LEAST, "verdict": verdict,
            "criterion": str(data.get("threshold", "")), "detail": str(data.get("value", ""))}


def dump_report(report: ChecklistReport) -> dict:
    """``test.json``'s content for ``report`` (:class:`ChecklistFile`, through the codec)."""
    return codec.dump(ChecklistFile(
        passed=report.passed,
        summary={m.model: ModelSummary(
            sum(c.verdict is Verdict.PASS for c in m.checks), len(m.checks),
            m.failed,
            [f"{c.check}/{c.case}" for c in m.checks if c.inconclusive],
            {str(c.check): RateSummary(c.passes, c.samples, c.value) for c in m.checks if c.case == f"{c.check}-overall"},
            m.requests, m.seconds) for m in report.models},
        thresholds=report.thresholds, checks=report.checks,
        series={m.model: ModelSeries(m.rss_mib, m.ms_per_token, m.seed, m.generated) for m in report.models},
        quality={m.model: m.quality for m in report.models if m.quality is not None},
        retention={m.model: RetentionEntry(m.retention.reference, m.retention.retained, m.retention.forgotten,
                                           m.retention.domain_answers, len(m.retention.retained),
                                           len(m.retention.forgotten))
                   for m in report.models if m.retention is not None},
        control=report.control, timestamp=report.timestamp))


def load_report(data: object, kind: str = "test.json") -> ChecklistReport:
    """A :class:`ChecklistReport` from ``test.json``'s content of any known version (see the module's history).

    Raises:
        ResultVersionError: a version newer than this toolkit knows.
        RecordError: content of the wrong shape.

    Example:
        >>> load_report(read_json("outputs/demo/test.json")).passed
        True
    """
    file = codec.load(ChecklistFile, data, kind=kind)
    version = data.get(codec.VERSION_KEY, 1) if isinstance(data, dict) else 1
    names = list(dict.fromkeys([*(c.model for c in file.checks), *file.series]))
    models = []
    for name in names:
        series, summary, kept = file.series.get(name, ModelSeries()), file.summary.get(name, ModelSummary()), None
        if name in file.retention:
            entry = file.retention[name]
            kept = RetentionRecord(entry.reference, entry.retained, entry.forgotten, entry.domain_answers)
        models.append(ModelReport(name, [c for c in file.checks if c.model == name], series.rss_mib,
                                  series.ms_per_token, series.seed, series.generated, summary.requests,
                                  summary.seconds, file.quality.get(name), kept))
    return ChecklistReport(models, file.thresholds, file.control, file.timestamp, version)
