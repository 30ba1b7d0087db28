"""The checklist's result (``test.json``): every check as numbers with a unit, a threshold and a verdict.

A :class:`CheckResult` carries what was measured (``value``, in ``unit``), what passing means
(``threshold`` and its ``bound``, and the rule in words), the :class:`Verdict`, and, apart,
the answer a case got and any detail in words. Nothing downstream parses a figure or a verdict
out of text: the report and the comparison read these fields.

The file's layout and version history are in :mod:`slmops.toolkit.domain.results.checklist_file`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

#: The version :func:`~slmops.toolkit.domain.results.checklist_file.dump_report` writes.
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

    @property
    def failed(self) -> list[str]:
        """The checks that failed, as ``check/case`` (``test.json``'s ``summary.<model>.failed``)."""
        return [f"{c.check}/{c.case}" for c in self.checks if c.verdict is Verdict.FAIL]

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

    def model(self, name: str) -> ModelReport:
        """The report of the model registered as ``name``.

        Raises:
            KeyError: no model of that name was checked.
        """
        found = next((m for m in self.models if m.model == name), None)
        if found is None:
            raise KeyError(f"{name} was not checked (checked: {', '.join(m.model for m in self.models)})")
        return found

    def top1_agreement(self) -> dict[str, float]:
        """Top-1 agreement with the FP32 reference by model, for the models that were compared."""
        return {m.model: m.quality.top1_agreement for m in self.models if m.quality is not None}
