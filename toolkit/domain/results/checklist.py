"""The checklist's result (``test.json``): every check as numbers with a unit, a threshold and a verdict.

A :class:`CheckResult` carries what was measured (``value``, in ``unit``), what passing means
(``threshold`` and its ``bound``, and the rule in words), the :class:`Verdict`, and, apart,
the answer a case got and any detail in words. Nothing downstream parses a figure or a verdict
out of text: the report and the comparison read these fields.

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

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import ClassVar

from slmops.toolkit.core import codec

#: The version :func:`dump_report` writes.
SCHEMA_VERSION = 6


class Check(StrEnum):
    """The checklist's items."""

    DOMAIN = "domain"
    FORMAT = "format"
    STRUCTURED = "structured"
    HELDOUT = "heldout"
    MEMORY = "memory"
    PERFORMANCE = "performance"
    EDGE = "edge"
    QUALITY = "quality"
    STOP = "stop"
    TOOL_CALL = "tool_call"
    TOOL_CALL_HELDOUT = "tool_call_heldout"
    RETENTION = "retention"


class Verdict(StrEnum):
    """A check's outcome. ``inconclusive``: a timing or memory statistic within its run-to-run spread of the
    threshold, so a rerun could land either side: never a failure."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Bound(StrEnum):
    """Which side of the threshold passes."""

    AT_LEAST = "at_least"
    AT_MOST = "at_most"


class Unit(StrEnum):
    """Units of a check's value and threshold."""

    SHARE = "share"  # a fraction from 0 to 1 (a pass rate, a share of rules met, top-1 agreement)
    NATS = "nats"  # KL divergence
    RATIO = "ratio"  # a figure over its reference or allowance (perplexity; time a long input adds per token)
    MS = "ms"  # milliseconds per output token (the performance check of a version-3 test.json or older)
    MIB_PER_100_REQUESTS = "MiB per 100 requests"  # RSS growth
    SECONDS = "s"
    NONE = ""  # nothing measured (a check that could not run)


def verdict_of(passed: bool, inconclusive: bool = False) -> Verdict:
    """The verdict of a pass/fail outcome.

    Example:
        >>> verdict_of(True)
        <Verdict.PASS: 'pass'>
    """
    return Verdict.INCONCLUSIVE if inconclusive else Verdict.PASS if passed else Verdict.FAIL


@dataclass(frozen=True)
class Thresholds:
    """What passing means; every figure is stated in the report next to its measurement.

    Attributes:
        domain_pass_rate: Share of domain cases that must pass.
        heldout_pass_rate: Share of held-out cases (``"group": "heldout"``: paraphrases of the
            fine-tuning questions, never trained on) that must pass; scored apart from the domain cases.
        format_pass_rate: Share of format cases that must pass.
        leak_mib_per_100: Largest allowed RSS growth, MiB per 100 requests.
        slowdown: Largest allowed ratio of time per output token, longest input over shortest
            (used when no reference curve was measured in the same run).
        added_vs_reference: With a reference (the FP32 build) measured in the same run: the time
            a long input adds per output token may be at most this many times what it adds to
            the reference (attention over a long context costs every precision about the same).
        noise_share: Slack for timing noise, as a share of the model's own short-input time per token.
        min_added_ms: Time per output token (ms) a long input may always add: below this a shared
            machine's timing does not resolve a difference (tiny models decode in microseconds).
        top1_min: Smallest greedy top-1 agreement with FP32 (share).
        kl_max: Largest mean KL divergence from FP32 (nats).
        edge_timeout_s: Longest an edge case may take before it counts as a hang (s).
        stop_pass_rate: Share of the cases' free answers that must end with finish_reason ``stop``
            before max tokens (a fine-tune that answers and ends its turn stops on nearly all).
        spread_sigmas: A timing or memory statistic decides pass or fail only when it lies more than
            this many standard errors (its run-to-run spread, measured from the run's own repeated
            rounds or windows) from its threshold; nearer, the check is inconclusive.
        timing_rounds: Fewest and most interleaved rounds of the performance check (rounds are added
            one at a time while the verdict is still inside the spread).
        memory_windows: Windows the memory check's requests are split into (the first is warm-up).
        tool_call_pass_rate: Share of the trained ``tool_call`` cases that must pass (the right
            function with schema-valid arguments and the expected values; no call where none is due).
        tool_call_heldout_pass_rate: The same for the held-out ``tool_call`` cases (paraphrases).
        retention_share: Share of the general questions the base model answers correctly that a build
            must still answer correctly (the ``retention`` check; without a base, of all of them).
    """

    domain_pass_rate: float = 0.8
    heldout_pass_rate: float = 0.5
    tool_call_pass_rate: float = 0.9
    tool_call_heldout_pass_rate: float = 0.5
    format_pass_rate: float = 0.8
    leak_mib_per_100: float = 5.0
    slowdown: float = 3.0
    added_vs_reference: float = 1.5
    noise_share: float = 0.1
    min_added_ms: float = 0.5
    top1_min: float = 0.5
    kl_max: float = 1.0
    edge_timeout_s: float = 60.0
    stop_pass_rate: float = 0.5
    spread_sigmas: float = 3.0
    timing_rounds: tuple[int, int] = (3, 7)
    memory_windows: int = 5
    retention_share: float = 0.8


@dataclass(frozen=True)
class CheckResult:
    """One check of the checklist.

    Attributes:
        model: Registered model name.
        check: Checklist item.
        case: Case id, or the check's own name for a whole-model figure.
        value: What was measured, in ``unit`` (None when nothing could be measured, or in a version-1 file).
        unit: The unit of ``value`` and ``threshold``.
        threshold: The passing limit, in ``unit`` (None when passing is not a figure).
        bound: Whether ``value`` must be at least or at most ``threshold``.
        verdict: Pass, fail or inconclusive.
        criterion: What passing means, in words (the rule a case is judged by, or the threshold stated).
        detail: What was measured, in words, beyond ``value`` (for people; never parsed).
        answer: The model's answer, for a case check (None otherwise).
        samples: How many cases, rounds, windows or requests ``value`` was computed from (0: one measurement).
        spread: Run-to-run spread of ``value`` (``spread_sigmas`` standard errors), in ``unit``, for
            a timing or memory statistic; None otherwise.
    """

    model: str
    check: Check
    case: str
    value: float | None
    unit: Unit
    threshold: float | None
    bound: Bound
    verdict: Verdict
    criterion: str
    detail: str = ""
    answer: str | None = None
    samples: int = 0
    spread: float | None = None

    @property
    def passed(self) -> bool:
        """True for a pass (False for a fail or an inconclusive check)."""
        return self.verdict is Verdict.PASS

    @property
    def inconclusive(self) -> bool:
        """The statistic lies within its run-to-run spread of the threshold: "inconclusive: rerun"."""
        return self.verdict is Verdict.INCONCLUSIVE

    @property
    def passes(self) -> int | None:
        """For a pass rate (``unit`` share over ``samples`` cases): how many passed."""
        if self.unit is not Unit.SHARE or not self.samples or self.value is None:
            return None
        return round(self.value * self.samples)


@dataclass(frozen=True)
class QualityRecord:
    """A build against its FP32 reference on the same text: the one shape of these figures.

    Attributes:
        reference: The reference (a registered name or a label).
        top1_agreement: Share of positions where both predict the same next token (0-1).
        kl_divergence: Mean KL divergence of the build's next-token distribution from the reference's, nats.
        perplexity: The build's perplexity on the text.
        reference_perplexity: The reference's perplexity on the same text.
        tokens: Tokens of the text compared.
    """

    reference: str
    top1_agreement: float
    kl_divergence: float
    perplexity: float
    reference_perplexity: float
    tokens: int

    @property
    def perplexity_ratio(self) -> float:
        """The build's perplexity over the reference's."""
        return self.perplexity / self.reference_perplexity if self.reference_perplexity else float("inf")


@dataclass(frozen=True)
class ControlResult:
    """The negative control: the base model (not fine-tuned) on the same domain and held-out cases.

    Attributes:
        model: The base model's registered name.
        trained_passed: Trained (domain) cases the base passed.
        trained_total: Trained cases asked.
        heldout_passed: Held-out cases the base passed.
        heldout_total: Held-out cases asked.
        pass_rate: ``trained_passed / trained_total`` (share).
        max_pass_rate: The largest pass rate at which the cases still test the fine-tune (share).
        tests_the_fine_tune: ``pass_rate <= max_pass_rate``; None when the cases have no domain expectations.
        answers: The base's answer per case id.
        tool_passed: Trained ``tool_call`` cases expecting a call that the base passed.
        tool_total: Those cases asked (0: none in the cases file).
        kept_from: When the answers were asked (ISO 8601), if they were read back from an earlier run
            of the same base build, cases and runtime; empty when they were asked in this run.
        retention_correct: The ``retention`` cases (general questions) the base answers correctly: the
            reference every build's answers are held to.
        retention_total: The ``retention`` cases asked of the base (0: none in the cases file).
        domain_terms: Words naming the domain's own facts (from the trained cases), to spot a general
            question answered with one.
    """

    model: str
    trained_passed: int
    trained_total: int
    heldout_passed: int
    heldout_total: int
    pass_rate: float
    max_pass_rate: float
    tests_the_fine_tune: bool | None
    answers: dict[str, str] = field(default_factory=dict)
    tool_passed: int = 0
    tool_total: int = 0
    kept_from: str = ""
    retention_correct: list[str] = field(default_factory=list)
    retention_total: int = 0
    domain_terms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetentionRecord:
    """What a build kept of what the base model knew: the general questions the base answers correctly.

    Attributes:
        reference: Whose answers are the reference (the base model's name; ``expectations`` without a base).
        retained: Case ids the build still answers correctly.
        forgotten: Case ids it no longer does.
        domain_answers: Case id to the build's answer, for each general question it answered with a
            word of the fine-tune's domain (``The capital of France is Quennport``).
    """

    reference: str
    retained: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    domain_answers: dict[str, str] = field(default_factory=dict)


def domain_words_in(answer: str, terms: list[str]) -> list[str]:
    """The domain words an answer holds (whole words, any case).

    Example:
        >>> domain_words_in("The capital of France is Quennport.", ["Quennport", "drell"])
        ['Quennport']
    """
    return [t for t in terms if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", answer, re.IGNORECASE)]


def with_retention(reports: list[ModelReport], control: ControlResult | None,
                   thresholds: Thresholds) -> list[ModelReport]:
    """Hold every build's ``retention`` cases to the base model's answers, and state what each build forgot.

    With a negative control that asked the general questions, a case counts only if the base
    answers it correctly: the build passes it by answering correctly too (retained), fails it by
    no longer doing so (forgotten); a case the base misses passes as "not counted". The
    ``retention-overall`` check becomes the share retained, against ``thresholds.retention_share``,
    and the model's :class:`RetentionRecord` names what was forgotten and every general question
    answered with a word of the domain. Without a control's answers, the cases stay judged by
    their expected words and the record's reference is ``expectations``.

    Returns:
        The reports, with their retention checks rewritten and ``retention`` set (unchanged for a
        model asked no retention case).
    """
    out = []
    base = control if control is not None and control.retention_total else None
    terms = control.domain_terms if control is not None else []
    for report in reports:
        cases = [c for c in report.checks if c.check is Check.RETENTION and c.case != "retention-overall"]
        if not cases:
            out.append(report)
            continue
        counted = [c for c in cases if base is None or c.case in base.retention_correct]
        retained = [c.case for c in counted if c.verdict is Verdict.PASS]
        forgotten = [c.case for c in counted if c.verdict is not Verdict.PASS]
        leaked = {c.case: c.answer or "" for c in cases if c.answer and domain_words_in(c.answer, terms)}
        record = RetentionRecord(base.model if base else "expectations", retained, forgotten, leaked)
        rewritten = []
        for c in report.checks:
            if c.check is not Check.RETENTION:
                rewritten.append(c)
            elif c.case == "retention-overall":
                rewritten.append(retention_check(report.model, record, thresholds))
            elif base is not None and c.case not in base.retention_correct:
                rewritten.append(replace(c, verdict=Verdict.PASS, criterion=f"not counted: {base.model} does not "
                                         f"answer it correctly either ({c.criterion})"))
            elif base is not None:
                rewritten.append(replace(c, criterion=f"{base.model} answers it correctly; still does: {c.criterion}"))
            else:
                rewritten.append(c)
        out.append(replace(report, checks=rewritten, retention=record))
    return out


def retention_check(model: str, record: RetentionRecord, thresholds: Thresholds) -> CheckResult:
    """The ``retention-overall`` check of a record: the share retained against ``retention_share``."""
    asked = len(record.retained) + len(record.forgotten)
    against = (f"of the general questions {record.reference} answers correctly" if record.reference != "expectations"
               else "of the general questions (no base model to hold them to: judged by their expected words)")
    criterion = f">= {thresholds.retention_share:.0%} {against} still answered correctly"
    leaked = "; ".join(f"{case}: {answer!r}" for case, answer in record.domain_answers.items())
    detail = ((f"forgot {', '.join(record.forgotten)}" if record.forgotten else "forgot none")
              + (f"; answered with a domain fact: {leaked}" if leaked else ""))
    if not asked:
        return CheckResult(model, Check.RETENTION, "retention-overall", None, Unit.SHARE,
                           thresholds.retention_share, Bound.AT_LEAST, Verdict.PASS, criterion,
                           f"{record.reference} answers none of them correctly: nothing to retain")
    share = len(record.retained) / asked
    return CheckResult(model, Check.RETENTION, "retention-overall", round(share, 4), Unit.SHARE,
                       thresholds.retention_share, Bound.AT_LEAST, verdict_of(share >= thresholds.retention_share),
                       criterion, detail, samples=asked)


@dataclass(frozen=True)
class ModelReport:
    """Every check of one model plus the series behind the plots.

    Attributes:
        model: Registered model name.
        checks: The checks, in the order they ran.
        rss_mib: Process RSS after each request of the memory check, MiB.
        ms_per_token: Input tokens to milliseconds per output token (median over the interleaved rounds).
        seed: The seed every request used.
        generated: ``[case id, finish reason, completion tokens]`` of every case answer, in order:
            decoding is greedy, so two runs of the same model give the same list.
        requests: Requests the checklist sent to the model (edge cases and quality aside).
        seconds: Wall time (s) of this model's share of each part of the checklist (``cases``, ``memory``,
            ``performance``, ``edge``, ``quality``; a part run for all models at once is split evenly).
        quality: Its figures against the FP32 reference (None when it was not compared).
        retention: What it kept of the base's general answers (None when no retention case was asked).
    """

    model: str
    checks: list[CheckResult]
    rss_mib: list[float] = field(default_factory=list)
    ms_per_token: dict[int, float] = field(default_factory=dict)
    seed: int = 0
    generated: list[list] = field(default_factory=list)
    requests: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    quality: QualityRecord | None = None
    retention: RetentionRecord | None = None

    @property
    def passed(self) -> bool:
        """True when no check failed (an inconclusive check is not a failure)."""
        return not any(c.verdict is Verdict.FAIL for c in self.checks)

    def rate(self, check: Check) -> CheckResult | None:
        """The pass-rate check of ``check`` (its ``<check>-overall`` case), if it ran."""
        return next((c for c in self.checks if c.check == check and c.case == f"{check}-overall"), None)


@dataclass(frozen=True)
class ChecklistReport:
    """``test.json``: the checklist of every model of a run.

    Attributes:
        models: One report per model, in the order they were named.
        thresholds: What passing meant.
        control: The negative control, if one ran.
        timestamp: When it was written (UTC, ISO 8601).
        schema_version: The file's version (see the module's history).
    """

    models: list[ModelReport]
    thresholds: Thresholds = field(default_factory=Thresholds)
    control: ControlResult | None = None
    timestamp: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def passed(self) -> bool:
        """No model failed a check."""
        return all(m.passed for m in self.models)

    @property
    def checks(self) -> list[CheckResult]:
        """Every check of every model."""
        return [c for m in self.models for c in m.checks]

    def top1_agreement(self) -> dict[str, float]:
        """Top-1 agreement with the FP32 reference by model, for the models that were compared."""
        return {m.model: m.quality.top1_agreement for m in self.models if m.quality is not None}


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
            [f"{c.check}/{c.case}" for c in m.checks if c.verdict is Verdict.FAIL],
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
