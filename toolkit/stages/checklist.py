"""Stage 3: the tutorial's quality checklist as checks with thresholds, measured values and verdicts.

The checks per registered model, each a :class:`CheckResult`:

1. ``domain``: a cases file (JSONL, one case per line: ``id``, ``messages``, ``expect``);
   content rules ``contains`` (all), ``contains_any``, ``not_contains``, ``exact``.
2. ``format``: the structural rules of the same cases, reported apart: ``json_schema``
   (the answer, or its fenced ```json block, parses and validates), ``regex``, ``max_chars``.
   ``structured``: the ``json_schema`` cases again, asked with ``response_format`` so Foundry
   Local's constrained decoding enforces a schema (what an application using
   ``response_format`` gets), reported beside the free answers: the case's own
   ``response_format`` when it has one (the schema the application would send), else its
   ``json_schema``.
3. ``memory``: RSS of this process over windows of requests; the median growth of the last
   three windows' high-water marks must stay under a stated MB per 100 requests, and a leak
   must grow in each of them (an arena grows in steps that level off).
4. ``performance``: time per output token at a long input (1024 tokens, or half a smaller
   context: :data:`DECISIVE_LONG`) against a short one (64), judged against the FP32 build's measured interleaved in the same rounds
   (:func:`run_checklists`), else against a stated factor; every model is timed as its
   fixed-length registration, so each request generates the same number of tokens.
5. ``edge``: empty, whitespace, over-context, Unicode, control characters, special tokens,
   long histories, max tokens 0 and 1; valid input must be answered and invalid input refused
   with the toolkit's own error, in a child process with a timeout, so a crash or hang is
   caught and reported.
6. ``quality``: perplexity, top-1 agreement and KL divergence against the FP32 build.
7. ``stop``: the free answers to the cases must end with finish_reason ``stop`` (the model
   ended its turn on a stop token) before max tokens; a model that never stops fails, whatever
   its text.

Decoding is greedy (top-k 1) with a recorded seed, so a rerun sends the same requests and gets the
same answers and lengths (``generated`` in ``test.json``). A timing or memory verdict is decided
by a median over repeated rounds or windows only when it lies beyond its measured run-to-run
spread from the threshold (:func:`decide`); nearer, it is ``inconclusive: rerun``, which never
fails ``slmops test`` nor counts as a regression in ``slmops compare``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path

from toolkit.core import artifacts, workers
from toolkit.core.errors import (
    FoundryRequestError,
    InputError,
    InvalidOptionError,
    InvalidPromptError,
    PromptTooLongError,
    SlmopsError,
    ToolFailedError,
    ToolTimeoutError,
)
from toolkit.core.measure import rss_mb, timestamp
from toolkit.domain.datasets import HELDOUT
from toolkit.domain.params import DEFAULTS
from toolkit.domain.prompts import BUNDLED_CASES, prompt_text
from toolkit.runtimes import genai
from toolkit.runtimes.foundry import LoadedModel, check_response_format, find_model

_MODULE = "toolkit.stages.checklist"  # the worker module of the edge cases (this one)
CONTENT_RULES = ("contains", "contains_any", "not_contains", "exact")
FORMAT_RULES = ("json_schema", "regex", "max_chars")


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


@dataclass(frozen=True)
class Thresholds:
    """What passing means; every figure is stated in the report next to its measurement.

    Attributes:
        domain_pass_rate: Share of domain cases that must pass.
        heldout_pass_rate: Share of held-out cases (``"group": "heldout"``: paraphrases of the
            fine-tuning questions, never trained on) that must pass; scored apart from the domain cases.
        format_pass_rate: Share of format cases that must pass.
        leak_mb_per_100: Largest allowed RSS growth, MB per 100 requests (fitted slope).
        slowdown: Largest allowed ratio of time per output token, longest input over shortest
            (used when no reference curve was measured in the same run).
        added_vs_reference: With a reference (the FP32 build) measured in the same run: the time
            a long input adds per output token may be at most this many times what it adds to
            the reference (attention over a long context costs every precision about the same).
        noise_share: Slack for timing noise, as a share of the model's own short-input time per token.
        min_added_ms: Time per output token a long input may always add: below this a shared
            machine's timing does not resolve a difference (tiny models decode in microseconds).
        top1_min: Smallest greedy top-1 agreement with FP32.
        kl_max: Largest mean KL divergence from FP32 (nats).
        perplexity_ratio_max: Largest perplexity relative to FP32's on the same text.
        edge_timeout_s: Longest an edge case may take before it counts as a hang.
        stop_pass_rate: Share of the cases' free answers that must end with finish_reason ``stop``
            before max tokens (a fine-tune that answers and ends its turn stops on nearly all).
        spread_sigmas: A timing or memory statistic decides pass or fail only when it lies more than
            this many standard errors (its run-to-run spread, measured from the run's own repeated
            rounds or windows) from its threshold; nearer, the check is inconclusive.
        timing_rounds: Fewest and most interleaved rounds of the performance check (rounds are added
            one at a time while the verdict is still inside the spread).
        memory_windows: Windows the memory check's requests are split into (the first is warm-up).
    """

    domain_pass_rate: float = 0.8
    heldout_pass_rate: float = 0.5
    format_pass_rate: float = 0.8
    leak_mb_per_100: float = 5.0
    slowdown: float = 3.0
    added_vs_reference: float = 1.5
    noise_share: float = 0.1
    min_added_ms: float = 0.5
    top1_min: float = 0.5
    kl_max: float = 1.0
    perplexity_ratio_max: float = 2.0
    edge_timeout_s: float = 60.0
    stop_pass_rate: float = 0.5
    spread_sigmas: float = 3.0
    timing_rounds: tuple[int, int] = (3, 7)
    memory_windows: int = 5


@dataclass(frozen=True)
class Decision:
    """A statistic against its threshold, with its measured run-to-run spread.

    Attributes:
        value: The statistic (a median over rounds or windows), in the threshold's units.
        spread: ``spread_sigmas`` standard errors of ``value``, from the rounds' own scatter.
        threshold: The largest passing value.
        verdict: ``pass`` (value + spread <= threshold), ``fail`` (value - spread > threshold) or
            ``inconclusive`` (the threshold lies within the spread: a rerun could land either side).
    """

    value: float
    spread: float
    threshold: float
    verdict: str

    def words(self, unit: str) -> str:
        """The statistic, its spread and threshold in words."""
        return (f"{self.value:+.2f} {unit} (run-to-run spread ±{self.spread:.2f}, threshold {self.threshold:+.2f})"
                + ("; inconclusive: rerun" if self.verdict == "inconclusive" else ""))


def decide(samples: list[float], threshold: float, sigmas: float = 3.0) -> Decision:
    """Judge the median of repeated measurements against ``threshold``, outside their spread only.

    The spread is ``sigmas`` standard errors of the median, estimated from the samples' own
    scatter (1.4826 x the median absolute deviation, a standard deviation robust to one slow
    outlier; x1.2533 / sqrt(n) for the median of n).

    Example:
        >>> decide([1.0, 1.1, 0.9, 1.0], threshold=5.0).verdict
        'pass'
        >>> decide([4.0, 6.0, 5.5, 4.5], threshold=5.0).verdict
        'inconclusive'
    """
    import numpy as np

    values = np.asarray(samples, dtype=float)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    spread = sigmas * 1.2533 * mad / np.sqrt(len(values)) if len(values) > 1 else math.inf
    verdict = "pass" if median + spread <= threshold else "fail" if median - spread > threshold else "inconclusive"
    return Decision(round(median, 4), round(float(spread), 4), threshold, verdict)


@dataclass(frozen=True)
class CheckResult:
    """One check of the checklist.

    Attributes:
        model: Registered model name.
        check: Checklist item (see :class:`Check`).
        case: Case id, or the check's own name for a whole-model figure.
        threshold: What passing means, in words.
        value: What was measured (an answer, a figure, an error).
        passed: The verdict: True for a pass; False for a fail or an inconclusive timing or memory check.
        inconclusive: The statistic lies within its measured run-to-run spread of the threshold, so
            neither verdict would hold on a rerun: reported as "inconclusive: rerun", never as a
            failure (it does not fail ``slmops test`` and ``slmops compare`` does not count it).
    """

    model: str
    check: str
    case: str
    threshold: str
    value: str
    passed: bool
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``inconclusive``."""
        return "inconclusive" if self.inconclusive else "pass" if self.passed else "fail"


@dataclass(frozen=True)
class ModelReport:
    """Every check of one model plus the series behind the plots.

    Attributes:
        model: Registered model name.
        checks: The verdicts.
        rss_mb: Process RSS after each request of the memory check.
        ms_per_token: Input tokens to milliseconds per output token (median over the interleaved rounds).
        seed: The seed every request used.
        generated: ``[case id, finish reason, completion tokens]`` of every case answer, in order:
            decoding is greedy, so two runs of the same model give the same list.
        requests: Requests the checklist sent to the model (edge cases and quality aside).
        seconds: Wall time of this model's share of each part of the checklist (``cases``, ``memory``,
            ``performance``, ``edge``, ``quality``; a part run for all models at once is split evenly).
    """

    model: str
    checks: list[CheckResult]
    rss_mb: list[float] = field(default_factory=list)
    ms_per_token: dict[int, float] = field(default_factory=dict)
    seed: int = 0
    generated: list[list] = field(default_factory=list)
    requests: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no check failed (an inconclusive check is not a failure)."""
        return not any(c.verdict == "fail" for c in self.checks)


def _check_expectation(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a usable value of expectation ``name``."""
    if name in ("contains", "contains_any", "not_contains"):
        if not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value):
            raise ValueError(f"{name!r} must be a non-empty list of non-empty strings")
    elif name == "exact" and not isinstance(value, str):
        raise ValueError("'exact' must be a string")
    elif name == "regex":
        if not isinstance(value, str):
            raise ValueError("'regex' must be a string")
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"'regex' does not compile ({exc})") from exc
    elif name == "max_chars" and (type(value) is not int or value < 0):
        raise ValueError("'max_chars' must be a whole number >= 0")
    elif name == "json_schema":
        import jsonschema

        if not isinstance(value, dict):
            raise ValueError("'json_schema' must be a JSON Schema object")
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"'json_schema' is not a valid schema ({exc.message})") from exc


def _parse_case(line: str) -> dict:
    """One case from one JSONL line; ValueError (or its JSON subclass) says what is wrong."""
    case = json.loads(line)
    if not isinstance(case, dict):
        raise ValueError("a case is a JSON object")
    messages = case.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ValueError("each message is {'role': system|user|assistant, 'content': str}")
    if case.get("group", "") not in ("", HELDOUT):
        raise ValueError(f"'group' is {HELDOUT!r} (a held-out case, scored apart) or absent")
    if "id" in case and (not isinstance(case["id"], str) or not case["id"]):
        raise ValueError("'id' must be a non-empty string")
    expect = case.setdefault("expect", {})
    if not isinstance(expect, dict):
        raise ValueError("'expect' must be an object")
    unknown = set(expect) - set(CONTENT_RULES) - set(FORMAT_RULES)
    if unknown:
        raise ValueError(f"unknown expectations {sorted(unknown)}")
    for name, value in expect.items():
        _check_expectation(name, value)
    if "response_format" in case:
        if "json_schema" not in expect:
            raise ValueError("'response_format' needs a 'json_schema' expectation to judge the answer by")
        try:
            check_response_format(case["response_format"])
        except InputError as exc:
            raise ValueError(str(exc)) from exc
    return case


def load_cases(path: str | os.PathLike[str] | None = None) -> list[dict]:
    """Read a JSONL cases file (the bundled SmolLM2 cases when ``path`` is None).

    Every line is checked, expectations included (types, a regex that compiles, a valid JSON
    Schema), before any model is asked anything.

    Raises:
        InputError: the file is missing, not UTF-8, empty, or a line is not a valid case (the
            message names the line and what a case needs).
    """
    if path is None:
        text = resources.files("toolkit.domain.data").joinpath(BUNDLED_CASES).read_text()
        source = BUNDLED_CASES
    else:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"No cases file at {file}; pass --cases FILE.jsonl (one JSON case per line).")
        text, source = artifacts.read_text(file), str(file)
    cases = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = _parse_case(line)
        except ValueError as exc:
            raise InputError(
                f"{source}:{number} is not a valid case ({exc}): it needs 'messages', a list of "
                "{'role': system|user|assistant, 'content': str}, and 'expect' with any of "
                f"{list(CONTENT_RULES + FORMAT_RULES)}."
            ) from exc
        case.setdefault("id", f"case-{number}")
        cases.append(case)
    if not cases:
        raise InputError(f"{source} holds no cases; write one JSON case per line.")
    return cases


def _json_of(answer: str):
    """The JSON value an answer holds: the whole text, a fenced ```json block, or its first {...}."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", answer, re.DOTALL)
    candidates = [answer.strip(), fenced.group(1).strip() if fenced else "", answer[answer.find("{"):answer.rfind("}") + 1]]
    for text in candidates:
        try:
            return json.loads(text)
        except (json.JSONDecodeError, ValueError):
            continue
    raise ValueError("no JSON found")


def _rule(name: str, value, answer: str) -> tuple[bool, str]:
    if name == "contains":
        return all(w.lower() in answer.lower() for w in value), f"contains all of [{', '.join(value)}]"
    if name == "contains_any":
        return any(w.lower() in answer.lower() for w in value), f"contains any of [{', '.join(value)}]"
    if name == "not_contains":
        return not any(w in answer for w in value), f"contains none of [{', '.join(value)}]"
    if name == "exact":
        return answer.strip() == value, f"is exactly {value!r}"
    if name == "regex":
        return re.search(value, answer) is not None, f"matches /{value}/"
    if name == "max_chars":
        return len(answer) <= int(value), f"at most {value} characters"
    if name == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(_json_of(answer), value)
            return True, "valid JSON matching the schema"
        except (ValueError, jsonschema.ValidationError) as exc:
            return False, f"valid JSON matching the schema ({str(exc).splitlines()[0][:80]})"
    raise SlmopsError(f"Unknown expectation {name!r}; use {list(CONTENT_RULES + FORMAT_RULES)}.")


def judge(answer: str, expect: dict, rules: tuple[str, ...] = CONTENT_RULES + FORMAT_RULES) -> tuple[bool, str, float]:
    """Apply a case's expectations (those named in ``rules``) to an answer.

    Returns:
        ``(passed, threshold in words, score)``; the score is the share of rules met.

    Example:
        >>> judge("Paris.", {"contains_any": ["Paris"]})
        (True, 'contains any of [Paris]', 1.0)
    """
    outcomes = [_rule(name, value, answer) for name, value in expect.items() if name in rules]
    if not outcomes:
        return True, "answers", 1.0
    met = sum(ok for ok, _ in outcomes)
    return met == len(outcomes), "; ".join(text for _, text in outcomes), met / len(outcomes)


def growth_mb_per_100(rss_mb: list[float], skip: float = 0.5) -> float:
    """Least-squares slope of RSS over requests, in MB per 100 requests, after the first ``skip`` share.

    The first half is warm-up: ONNX Runtime's memory arena grows and shrinks for tens of
    requests before it settles (seen on the bundled model: 300 -> 690 -> 300 -> 690 MB, then flat).

    Example:
        >>> round(growth_mb_per_100([100 + 0.05 * i for i in range(200)]), 2)
        5.0
    """
    import numpy as np

    start = int(len(rss_mb) * skip)
    values = np.asarray(rss_mb[start:], dtype=float)
    if len(values) < 3:
        return 0.0
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    return float(slope * 100)


def input_lengths(context: int, shortest: int = 64) -> list[int]:
    """Input lengths from ``shortest`` to half the context, x4 apart.

    Example:
        >>> input_lengths(8192)
        [64, 256, 1024, 4096]
    """
    lengths, n = [], shortest
    while n < context // 2:
        lengths.append(n)
        n *= 4
    return [*lengths, context // 2] if context // 2 >= shortest else [max(1, context // 4)]


EDGE_CASES: list[tuple[str, str]] = [
    ("empty-prompt", "an empty user message (must be refused)"),
    ("whitespace-prompt", "only spaces, tabs and newlines (must be refused)"),
    ("over-context", "a prompt longer than the model's context (must be refused)"),
    ("unicode", "emoji, CJK and right-to-left text (must be answered)"),
    ("control-characters", "NUL, BEL and an ANSI escape (must be answered)"),
    ("special-tokens", "the chat template's special tokens inside user text (must be answered)"),
    ("long-history", "a many-turn conversation that fits the context (must be answered)"),
    ("max-tokens-0", "max output tokens 0 (must be refused)"),
    ("max-tokens-1", "max output tokens 1 (must give exactly one token)"),
]

#: The edge cases that must be refused, and with which error; every other one is valid input
#: and must be answered (a runtime that fails on it fails the check).
MUST_REFUSE: dict[str, type[InputError]] = {
    "empty-prompt": InvalidPromptError, "whitespace-prompt": InvalidPromptError,
    "over-context": PromptTooLongError, "max-tokens-0": InvalidOptionError,
}


def _edge_request(case: str, context: int) -> tuple[list[dict[str, str]], int]:
    user = {"role": "user"}
    if case == "empty-prompt":
        return [{**user, "content": ""}], 8
    if case == "whitespace-prompt":
        return [{**user, "content": "   \n\t  "}], 8
    if case == "over-context":
        return [{**user, "content": "word " * (context + 64)}], 8
    if case == "unicode":
        return [{**user, "content": "Translate: 😀 你好，世界 مرحبا بالعالم שלום"}], 8
    if case == "control-characters":
        return [{**user, "content": "a\x00b\x07c\x1b[31m red? \x7f"}], 8
    if case == "special-tokens":
        return [{**user, "content": "Repeat: <|im_end|><|im_start|>assistant\nhi</s><|endoftext|><|eot_id|>"}], 8
    if case == "long-history":
        # 23 turns where the context has room (about 12 tokens a turn, half the context at most).
        count = min(23, max(3, context // 48) | 1)
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Message number {i}."}
                 for i in range(count)]
        return turns, 8
    return [{**user, "content": "Hi"}], 0 if case == "max-tokens-0" else 1


def _edge_verdict(case: str, generation=None, error: Exception | None = None) -> tuple[str, bool]:
    """What one edge case did, in words, and whether that is right for the case."""
    refusal = MUST_REFUSE.get(case)
    if error is None:
        if refusal is not None:
            return f"answered ({generation.completion_tokens} tokens) although it must be refused", False
        passed = case != "max-tokens-1" or generation.completion_tokens == 1
        return f"answered ({generation.completion_tokens} tokens, {generation.finish_reason})", passed
    if refusal is not None and isinstance(error, refusal):
        return f"refused: {type(error).__name__}: {error}", True
    if refusal is not None:
        return f"refused with the wrong error {type(error).__name__} (expected {refusal.__name__}): {error}", False
    return f"a valid input failed: {type(error).__name__}: {error}", False


def _edge_task(job: dict, emit) -> None:
    """Worker task: run the edge cases from index ``skip`` on, emitting one record per case as it ends."""
    with LoadedModel(job["name"], job["cache"] or None) as model:
        for case, _ in EDGE_CASES[job["skip"]:]:
            messages, max_tokens = _edge_request(case, model.context_length)
            start = time.perf_counter()
            try:
                value, passed = _edge_verdict(case, model.generate(messages, max_tokens=max_tokens, seed=job["seed"]))
            except Exception as exc:  # noqa: BLE001 (every outcome is judged; an unexpected one is the finding)
                value, passed = _edge_verdict(case, error=exc)
            emit({"case": case, "value": f"{value} in {time.perf_counter() - start:.2f} s", "passed": passed})


def _run_edge_cases(name: str, cache: str | Path | None, timeout_s: float, seed: int,
                    startup_s: float = 60.0) -> list[CheckResult]:
    """Edge cases in a child process; a case that crashes or hangs it fails, and the rest go on in a new one.

    Each case gets ``timeout_s`` from the previous one's answer (the first also gets
    ``startup_s`` for the model to load): the worker's idle timeout.
    """
    threshold = (f"valid input answered, invalid input refused with the toolkit's own error, within {timeout_s:.0f} s; "
                 "no crash")
    results: list[CheckResult] = []

    def record(row: dict) -> None:
        results.append(CheckResult(name, Check.EDGE, row["case"], threshold, row["value"], row["passed"]))

    while len(results) < len(EDGE_CASES):
        failure = ""
        try:
            workers.run_worker(_MODULE, "edge",
                               {"name": name, "cache": str(cache or ""), "skip": len(results), "seed": seed},
                               name=f"edge cases of {name}", idle_timeout=timeout_s, startup_s=startup_s,
                               on_event=record)
        except ToolTimeoutError:
            failure = f"no answer within {timeout_s:.0f} s: hung, killed"
        except ToolFailedError as exc:
            failure = f"the process died (exit {exc.returncode}): {exc.detail.splitlines()[-1][:200]}"
        if len(results) < len(EDGE_CASES) and failure:  # the case in progress crashed or hung the child
            record({"case": EDGE_CASES[len(results)][0], "value": failure, "passed": False})
        elif len(results) < len(EDGE_CASES):
            raise SlmopsError(f"The edge-case worker for {name} stopped after {len(results)} of {len(EDGE_CASES)} "
                              "cases without an error; rerun the checklist.")
    return results


def _answer(model: LoadedModel, case: dict, max_tokens: int, seed: int, **options: object) -> str:
    """A case's answer; a runtime failure on it (valid input, or a model a grammar cannot steer) is a failed answer."""
    return _generation(model, case, max_tokens, seed, **options)[0]


def _generation(model: LoadedModel, case: dict, max_tokens: int, seed: int,
                **options: object) -> tuple[str, str, int]:
    """A case's ``(answer, finish_reason, completion tokens)``; a runtime failure is answered as ``error``."""
    try:
        generation = model.generate(case["messages"], max_tokens=max_tokens, seed=seed, **options)
    except FoundryRequestError as exc:
        return f"(the runtime failed: {exc})", "error", 0
    return generation.text, generation.finish_reason, generation.completion_tokens


def _stop_check(name: str, finishes: list[tuple[str, int]], max_tokens: int, limits: Thresholds) -> CheckResult:
    """Whether the free answers end on a stop token, well before ``max_tokens``."""
    stopped = [tokens for reason, tokens in finishes if reason == "stop" and tokens < max_tokens]
    share = len(stopped) / len(finishes)
    ran_on = sum(reason == "length" for reason, _ in finishes)
    longest = f", longest stopped answer {max(stopped)} tokens" if stopped else ""
    return CheckResult(
        name, Check.STOP, "stop-overall",
        f">= {limits.stop_pass_rate:.0%} of the cases' answers end with finish_reason stop before max tokens "
        f"({max_tokens}); a model that never ends its turn fails whatever its text",
        f"{len(stopped)}/{len(finishes)} = {share:.0%} stopped; {ran_on} ran to max tokens{longest}"
        + ("" if stopped else ": the end-of-turn token does not stop generation (run `slmops doctor` on the "
           "model folder)"),
        share >= limits.stop_pass_rate)


def _content_checks(model: LoadedModel, cases: list[dict], limits: Thresholds, max_tokens: int, seed: int,
                    progress: bool, generated: list[list] | None = None) -> list[CheckResult]:
    """Domain and format: each case's answer against its expectations, then the pass rate of each.

    ``generated`` receives ``[case id, finish reason, completion tokens]`` per answer.
    """
    from tqdm.auto import tqdm

    checks: list[CheckResult] = []
    scores: dict[str, list[bool]] = {Check.DOMAIN: [], Check.HELDOUT: [], Check.FORMAT: []}
    finishes: list[tuple[str, int]] = []
    for case in tqdm(cases, desc=f"{model.name}: cases", unit="case", disable=not progress):
        answer, reason, tokens = _generation(model, case, max_tokens, seed)
        finishes.append((reason, tokens))
        if generated is not None:
            generated.append([case["id"], reason, tokens])
        content = Check.HELDOUT if case.get("group") == HELDOUT else Check.DOMAIN
        for check, rules in ((content, CONTENT_RULES), (Check.FORMAT, FORMAT_RULES)):
            if any(rule in case["expect"] for rule in rules) or (check is content and not case["expect"]):
                passed, threshold, score = judge(answer, case["expect"], rules)
                scores[check].append(passed)
                checks.append(CheckResult(model.name, check, case["id"], threshold,
                                          f"score {score:.2f}: {answer.strip()[:300]}", passed))
    # The schema cases again, as an application asking for structured output would send them.
    schema_cases = [case for case in cases if "json_schema" in case["expect"]]
    scores[Check.STRUCTURED] = []
    for case in tqdm(schema_cases, desc=f"{model.name}: structured", unit="case",
                     disable=not progress or not schema_cases):
        response_format = case.get("response_format") or {
            "type": "json_schema", "json_schema": {"name": case["id"], "schema": case["expect"]["json_schema"]}}
        answer = _answer(model, case, max_tokens, seed, response_format=response_format)
        passed, threshold, score = judge(answer, case["expect"], FORMAT_RULES)
        scores[Check.STRUCTURED].append(passed)
        checks.append(CheckResult(model.name, Check.STRUCTURED, case["id"], f"with response_format: {threshold}",
                                  f"score {score:.2f}: {answer.strip()[:300]}", passed))
    for check, rate in ((Check.DOMAIN, limits.domain_pass_rate), (Check.HELDOUT, limits.heldout_pass_rate),
                        (Check.FORMAT, limits.format_pass_rate), (Check.STRUCTURED, limits.format_pass_rate)):
        if scores[check]:
            share = sum(scores[check]) / len(scores[check])
            checks.append(CheckResult(model.name, check, f"{check}-overall", f">= {rate:.0%} of cases pass",
                                      f"{sum(scores[check])}/{len(scores[check])} = {share:.0%}", share >= rate))
    if finishes:
        checks.append(_stop_check(model.name, finishes, max_tokens, limits))
    return checks


def window_growth(rss: list[float], per_window: int) -> tuple[list[float], list[float]]:
    """High-water RSS of each window of ``per_window`` requests after the first (warm-up) window, and the growth
    from each window to the next in MB per 100 requests.

    A window's high-water mark ignores the arena's swings inside it (300 -> 690 -> 300 MB on the
    bundled model): an arena's marks stop rising, a leak's rise by the same amount every window.

    Example:
        >>> window_growth([100.0 + 0.5 * i for i in range(40)], 10)[1]
        [50.0, 50.0]
    """
    levels = [max(rss[i:i + per_window]) for i in range(per_window, len(rss) - per_window + 1, per_window)]
    return levels, [round((b - a) * 100 / per_window, 3) for a, b in zip(levels, levels[1:])]


def _memory_check(model: LoadedModel, requests: int, limits: Thresholds, seed: int, progress: bool,
                  rss: list[float]) -> CheckResult:
    """RSS over windows of requests: a leak grows in every window, an arena grows in steps that level off.

    The requests are split into ``limits.memory_windows`` windows; the first is warm-up. The
    statistic is the median growth of the last three windows' high-water marks (MB per 100
    requests), judged outside its spread (:func:`decide`). A leak is a fail only when every one
    of the last three windows grew (it keeps growing linearly); growth that has not settled
    either way gets up to as many windows again, then is inconclusive. One window alone never
    decides (seen: one window +43.65 MB per 100 requests, the next +16.61, then flat: an arena).
    """
    from tqdm.auto import tqdm

    windows = max(4, limits.memory_windows)
    per = max(1, requests // windows)

    def measure(count: int, label: str) -> None:
        for _ in tqdm(range(count), desc=f"{model.name}: {label}", unit="req", disable=not progress):
            model.generate([{"role": "user", "content": "Say hello."}], max_tokens=4, seed=seed)
            rss.append(rss_mb())

    measure(max(requests, per * windows), "memory")
    limit = limits.leak_mb_per_100
    for extra in range(windows + 1):
        levels, growth = window_growth(rss, per)
        recent = growth[-3:]
        decision = decide(recent, limit, limits.spread_sigmas)
        keeps_growing = all(g > limit / 2 for g in recent)
        if decision.verdict == "pass" or (decision.verdict == "fail" and keeps_growing) or extra == windows:
            break
        measure(per, "memory (one more window)")
    threshold = (f"median growth of the last 3 windows' high-water RSS <= {limit} MB per 100 requests, "
                 f"beyond {limits.spread_sigmas:g} standard errors ({per} requests a window, the first is warm-up); "
                 "a leak must grow in each of the last 3 windows")
    value = (f"growth per window {', '.join(f'{g:+.2f}' for g in growth)} MB per 100 requests (high-water "
             f"{', '.join(f'{v:.0f}' for v in levels)} MB over {len(rss)} requests): median of the last 3 "
             f"{decision.words('MB per 100')}")
    if decision.verdict == "pass":
        settled = "levels off: an arena, not a leak" if any(g > limit for g in growth) else "flat"
        return CheckResult(model.name, Check.MEMORY, "rss-growth", threshold, f"{value}; {settled}", True)
    if decision.verdict == "fail" and keeps_growing:
        return CheckResult(model.name, Check.MEMORY, "rss-growth", threshold,
                           f"{value}; it grew in every window: a leak", False)
    return CheckResult(model.name, Check.MEMORY, "rss-growth", threshold,
                       f"{value}; growth has not settled within {len(rss)} requests: inconclusive: rerun with "
                       "more requests", False, inconclusive=True)


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


def run_checklists(names: list[str], *, reference: str | None = None, cases: list[dict] | None = None,
                   cache: str | Path | None = None, max_tokens: int = 48, seed: int = 0,
                   requests: int = DEFAULTS.checklist_requests, lengths: list[int] | None = None,
                   thresholds: Thresholds | None = None, progress: bool = True) -> list[ModelReport]:
    """The checklist for several models, with the work they share done once.

    Per model: the cases (domain, held-out, format, structured, stop, from one set of greedy
    answers), the memory windows and the edge cases. Across models: the performance check times
    every model and the reference interleaved, round by round (:func:`_performance_checks`), and
    the quality check reads the reference's logits once for every model
    (:func:`~toolkit.runtimes.genai.agreement` with all of them).

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
    parts: dict[str, dict] = {}
    for name in names:
        clock = _Clock()
        rss: list[float] = []
        generated: list[list] = []
        with LoadedModel(name, cache) as model:
            checks = _content_checks(model, cases, limits, max_tokens, seed, progress, generated)
            sent = len(cases) + sum("json_schema" in c["expect"] for c in cases)
            clock.lap("cases")
            if requests:
                checks.append(_memory_check(model, requests, limits, seed, progress, rss))
                clock.lap("memory")
        parts[name] = {"checks": checks, "rss": rss, "generated": generated, "requests": sent + len(rss),
                       "clock": clock}
    shared = _Clock()
    performance, curves, timed = ({}, {}, {}) if lengths == [] else _performance_checks(
        names, reference, cache, lengths, limits, seed, progress)
    shared.lap("performance", len(names))
    candidates = [n for n in names if reference and n != reference]
    quality = _quality_checks(candidates, reference, cache, limits) if candidates else {}
    shared.lap("quality", len(candidates) or 1)
    for name in names:
        part, clock = parts[name], parts[name]["clock"]
        if name in performance:
            part["checks"].append(performance[name])
        part["requests"] += timed.get(name, 0)
        clock.restart()
        part["checks"] += _run_edge_cases(name, cache, limits.edge_timeout_s, seed)
        clock.lap("edge")
        clock.seconds["performance"] = shared.seconds.get("performance", 0.0)
        if name in quality:
            part["checks"] += quality[name]
            clock.seconds["quality"] = shared.seconds["quality"]
    return [ModelReport(name, parts[name]["checks"], parts[name]["rss"], curves.get(name, {}), seed,
                        parts[name]["generated"], parts[name]["requests"], parts[name]["clock"].rounded())
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


def _allowed_excess(short: float, long: float, limits: Thresholds, ref: tuple[float, float] | None) -> float:
    """What a long input adds per output token over what it may add (<= 0 passes), for one round."""
    added = long - short
    if ref is None:  # no reference in the run: the stated factor over the model's own short-input time
        return added - max((limits.slowdown - 1) * short, limits.min_added_ms)
    ref_added = max(0.0, ref[1] - ref[0])
    return added - max(limits.added_vs_reference * ref_added + limits.noise_share * short, limits.min_added_ms)


def _performance_check(name: str, rounds: list[tuple[float, float]], limits: Thresholds,
                       reference: tuple[str, list[tuple[float, float]]] | None,
                       lengths: tuple[int, int]) -> CheckResult:
    """Time per output token at the longest input against the shortest, per interleaved round, against a threshold.

    Args:
        name: The model.
        rounds: ``(short, long)`` milliseconds per output token, one pair per round.
        reference: The FP32 build's name and rounds, measured interleaved with these (same round, same load).
        lengths: ``(shortest, longest)`` input tokens.

    The statistic is the median over rounds of what the long input adds beyond what it may add
    (0 is the threshold), decided outside its spread (:func:`decide`), else inconclusive.
    """
    shortest, longest = lengths
    if not rounds:
        return CheckResult(name, Check.PERFORMANCE, "time-per-token", "answers of 2+ tokens to time",
                           "no request generated two tokens: nothing to time", False)
    ref_name, ref_rounds = reference or ("", [])
    judged_by_ref = bool(ref_rounds) and ref_name != name
    excess = [_allowed_excess(s, l, limits, ref_rounds[i] if judged_by_ref else None)
              for i, (s, l) in enumerate(rounds)]
    decision = decide(excess, 0.0, limits.spread_sigmas)
    short_ms = statistics.median(s for s, _ in rounds)
    long_ms = statistics.median(l for _, l in rounds)
    curve = f"{shortest}: {short_ms:.3g} ms, {longest}: {long_ms:.3g} ms per output token (medians of {len(rounds)})"
    if judged_by_ref:
        ref_added = statistics.median(max(0.0, l - s) for s, l in ref_rounds)
        threshold = (f"the time {longest} input tokens add per output token (over {shortest}) at most "
                     f"{limits.added_vs_reference}x what they add to {ref_name}, measured interleaved in the same "
                     f"rounds (+{limits.noise_share:.0%} of the short-input time; {limits.min_added_ms} ms always "
                     f"allowed); median over rounds, beyond {limits.spread_sigmas:g} standard errors")
        value = (f"{curve}: adds {long_ms - short_ms:+.2f} ms ({ref_name} adds {ref_added:.2f}); over the "
                 f"allowance by {decision.words('ms')}")
    else:
        threshold = (f"time per output token at {longest} input tokens at most {limits.slowdown}x its value at "
                     f"{shortest} (or at most {limits.min_added_ms} ms more); median over rounds, beyond "
                     f"{limits.spread_sigmas:g} standard errors")
        value = f"{curve} ({long_ms / short_ms:.2f}x); over the allowance by {decision.words('ms')}"
    return CheckResult(name, Check.PERFORMANCE, "time-per-token", threshold, value, decision.verdict == "pass",
                       inconclusive=decision.verdict == "inconclusive")


def _per_token_ms(model: LoadedModel, prompt: str, tokens: int, seed: int) -> float | None:
    """Milliseconds per output token of one request generating ``tokens`` tokens: the median gap between tokens.

    The median of the streamed tokens' gaps, not their mean: a stall of the process (another
    process took the core for a few milliseconds) lands in one or two gaps and moves a mean over
    15 tokens by a share of itself, the median not at all. Where the stream gives too few text
    pieces to take a median of, the mean after the first token.
    """
    arrivals: list[float] = []
    generation = None
    for piece in model.stream([{"role": "user", "content": prompt}], max_tokens=tokens, seed=seed):
        if isinstance(piece, str):
            arrivals.append(time.perf_counter())
        else:
            generation = piece
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    if len(gaps) >= max(2, tokens // 2):
        return statistics.median(gaps) * 1000
    if generation is None or generation.completion_tokens < 2 or generation.total_s <= generation.ttft_s:
        return None
    return (generation.total_s - generation.ttft_s) / (generation.completion_tokens - 1) * 1000


#: The long input the performance check times by default (at most half the context). At 1024 tokens attention already adds a resolved share
#: of the bundled model's time per token (its KV cache reads 47 MB a token against 150-540 MB of
#: weights); half the context (4096) only multiplies both sides of the judged ratio by four, at
#: four times the prompt pass in every round, and decides nothing more.
DECISIVE_LONG = 1024


def _performance_checks(names: list[str], reference: str | None, cache: str | Path | None,
                        lengths: list[int] | None, limits: Thresholds, seed: int, progress: bool,
                        tokens: int = 16) -> tuple[dict[str, CheckResult], dict[str, dict[int, float]], dict[str, int]]:
    """Time per output token of every model and the reference, interleaved round by round.

    Each model runs as its fixed-length registration
    (:func:`~toolkit.runtimes.foundry.fixed_length_registration`), so every request generates
    exactly ``tokens`` tokens whatever the fine-tune's style. A round asks every model (in an
    order that turns each round) for the shortest and the longest input, so a burst of load from
    other processes hits the models and their reference alike. Rounds go on, from
    ``limits.timing_rounds[0]`` to ``[1]``, while a verdict is still within its spread. The
    lengths between are measured once, for the curve only: they decide nothing.

    Returns:
        ``(check per model, curve per model, requests per model)``.
    """
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    from toolkit.runtimes.foundry import fixed_length_registration

    timed = list(dict.fromkeys([*names, *([reference] if reference else [])]))
    with contextlib.ExitStack() as stack:
        models = {n: stack.enter_context(LoadedModel(stack.enter_context(fixed_length_registration(n, cache)), cache))
                  for n in timed}
        first = models[timed[0]]
        tokenizer = Tokenizer.from_file(str(Path(first.model.get_path()) / "tokenizer.json"))
        context = min(m.context_length or (1 << 20) for m in models.values())
        # The judged ratio (what a long input adds against what it adds to FP32) does not depend on
        # the length: attention's cost grows linearly with it for every precision alike. So by default
        # the long input is where that cost is already well resolved (DECISIVE_LONG), not half the context.
        wanted = sorted(set(lengths) if lengths is not None else
                        {n for n in input_lengths(context) if n < DECISIVE_LONG} | {min(DECISIVE_LONG, context // 2)})
        if not wanted:
            return {}, {}, {}
        shortest, longest = wanted[0], wanted[-1]
        prompts = {n: prompt_text(tokenizer, n) for n in wanted}
        rounds: dict[str, list[tuple[float, float]]] = {n: [] for n in timed}
        curves: dict[str, dict[int, float]] = {n: {} for n in timed}
        requests = dict.fromkeys(timed, 0)
        low, high = limits.timing_rounds
        checks: dict[str, CheckResult] = {}
        bar = tqdm(total=low, desc="performance: interleaved rounds", unit="round", disable=not progress)
        for index in range(high):
            turn = index % len(timed)
            for n in timed[turn:] + timed[:turn]:
                pair = []
                for length in ((shortest, longest) if index % 2 == 0 else (longest, shortest)):
                    pair.append((length, _per_token_ms(models[n], prompts[length], tokens, seed)))
                    requests[n] += 1
                figures = dict(pair)
                if figures[shortest] is not None and figures[longest] is not None:
                    rounds[n].append((figures[shortest], figures[longest]))
                if index == 0:
                    for length in wanted[1:-1]:  # the curve between: once, for the plot
                        curves[n][length] = _per_token_ms(models[n], prompts[length], tokens, seed)
                        requests[n] += 1
            bar.update()
            ref_rounds = rounds.get(reference, []) if reference else []
            checks = {n: _performance_check(n, rounds[n], limits, (reference, ref_rounds) if reference else None,
                                            (shortest, longest)) for n in names}
            if index + 1 >= low and not any(c.inconclusive for c in checks.values()):
                break
            if index + 1 >= low:
                bar.total = high
        bar.close()
    for n in timed:
        if rounds[n]:
            curves[n][shortest] = round(statistics.median(s for s, _ in rounds[n]), 3)
            curves[n][longest] = round(statistics.median(l for _, l in rounds[n]), 3)
        curves[n] = {k: round(v, 3) for k, v in sorted(curves[n].items()) if v is not None}
    return checks, curves, requests


def _quality_checks(names: list[str], reference: str, cache: str | Path | None,
                    limits: Thresholds) -> dict[str, list[CheckResult]]:
    """Top-1 agreement, KL divergence and perplexity of every model against the reference, its logits read once."""
    ref_dir = Path(find_model(reference, cache).get_path())
    found = {a.model: a for a in genai.agreement(ref_dir, {n: Path(find_model(n, cache).get_path()) for n in names})}
    out = {}
    for name, a in found.items():
        ratio = a.perplexity / a.reference_perplexity
        text = f"on the bundled text ({a.tokens} tokens) against {reference}"
        out[name] = [
            CheckResult(name, Check.QUALITY, "top1-agreement", f">= {limits.top1_min} {text}", f"{a.top1:.3f}",
                        a.top1 >= limits.top1_min),
            CheckResult(name, Check.QUALITY, "kl-divergence", f"<= {limits.kl_max} nats {text}", f"{a.kl:.4f}",
                        a.kl <= limits.kl_max),
            CheckResult(name, Check.QUALITY, "perplexity", f"<= {limits.perplexity_ratio_max}x the reference's "
                        f"{a.reference_perplexity:.2f}", f"{a.perplexity:.2f} ({ratio:.2f}x)",
                        ratio <= limits.perplexity_ratio_max),
        ]
    return out


#: Largest share of the domain cases the base model (not fine-tuned) may pass before the cases count as testing nothing.
CONTROL_MAX_PASS = 0.1


def run_control(name: str, cases: list[dict], *, cache: str | Path | None = None, seed: int = DEFAULTS.seed,
                max_tokens: int = 48, progress: bool = True) -> dict:
    """A negative control: the base model (not fine-tuned) answers the same domain and held-out cases.

    If the base passes them, they test nothing about the fine-tune, and the verdict says so. The
    base gets the same answer budget as the checked models (``max_tokens``, the checklist's 48):
    the control asks whether the same question, judged the same way, is answered without the
    fine-tune (128 tokens cost the base 2.7x the time and only gave it more words to match by chance).

    Returns:
        ``{"model", "trained", "heldout", "pass_rate", "tests_the_fine_tune", "answers", "verdict"}``
        (``trained`` and ``heldout`` as ``"passed/total"``, ``answers`` by case id).
    """
    from tqdm.auto import tqdm

    content = [c for c in cases if any(rule in c["expect"] for rule in CONTENT_RULES)]
    if not content:
        return {"model": name, "trained": "0/0", "heldout": "0/0", "pass_rate": 0.0, "tests_the_fine_tune": None,
                "verdict": "the cases have no domain expectations, so there is nothing for the base to answer"}
    passed: dict[str, list[bool]] = {"trained": [], HELDOUT: []}
    answers = {}
    with LoadedModel(name, cache) as model:
        for case in tqdm(content, desc=f"{name}: control", unit="case", disable=not progress):
            answers[case["id"]] = _answer(model, case, max_tokens, seed)
            passed[HELDOUT if case.get("group") == HELDOUT else "trained"].append(
                judge(answers[case["id"]], case["expect"], CONTENT_RULES)[0])
    rate = sum(passed["trained"]) / len(passed["trained"]) if passed["trained"] else 0.0
    useful = rate <= CONTROL_MAX_PASS
    return {"model": name, "trained": f"{sum(passed['trained'])}/{len(passed['trained'])}",
            "heldout": f"{sum(passed[HELDOUT])}/{len(passed[HELDOUT])}", "pass_rate": round(rate, 3),
            "tests_the_fine_tune": useful, "answers": answers,
            "verdict": (f"the base model passes {rate:.0%} of the domain cases (at most {CONTROL_MAX_PASS:.0%}): "
                        "they test what the fine-tune added") if useful else
                       (f"the base model passes {rate:.0%} of the domain cases, over {CONTROL_MAX_PASS:.0%}: they "
                        "test what the base already knew, not the fine-tune; write cases only the fine-tune can "
                        "answer")}


def write_report(reports: list[ModelReport], path: str | os.PathLike[str], thresholds: Thresholds | None = None,
                 control: dict | None = None) -> dict:
    """Write ``test.json`` (verdict, per-model summary, every check, the plot series, the negative control)."""
    report = {
        "passed": all(r.passed for r in reports),
        "summary": {r.model: {"passed": sum(c.verdict == "pass" for c in r.checks), "total": len(r.checks),
                              "failed": [f"{c.check}/{c.case}" for c in r.checks if c.verdict == "fail"],
                              "inconclusive": [f"{c.check}/{c.case}" for c in r.checks if c.inconclusive],
                              "rates": {c.check: c.value for c in r.checks if c.case == f"{c.check}-overall"},
                              "requests": r.requests, "seconds": r.seconds}
                    for r in reports},
        "thresholds": asdict(thresholds or Thresholds()),
        "checks": [{**asdict(c), "verdict": c.verdict} for r in reports for c in r.checks],
        "series": {r.model: {"rss_mb": r.rss_mb, "ms_per_token": r.ms_per_token, "seed": r.seed,
                             "generated": r.generated} for r in reports},
        "timestamp": timestamp(),
    }
    if control is not None:
        report["control"] = control
    artifacts.write_json(path, report)
    return report


def before_after(control: dict, report: ModelReport, count: int = 4) -> list[dict]:
    """A few domain cases side by side: the base's answer (the control) and the fine-tune's.

    Example:
        >>> before_after(control, reports[0])[0]["case"]
        'trained-capital'
    """
    tuned = {c.case: c.value.split(": ", 1)[-1] for c in report.checks if c.check in (Check.DOMAIN, Check.HELDOUT)}
    cases = [case for case in control.get("answers", {}) if case in tuned][:count]
    return [{"case": case, "base": control["answers"][case][:120], report.model: tuned[case][:120]} for case in cases]


def summary_rows(report: dict) -> list[dict]:
    """One row per model from a written report: passed, total, the pass rate of each case check, what failed."""
    return [{"model": model, "passed": s["passed"], "total": s["total"],
             **{check: s.get("rates", {}).get(check, "") for check in (Check.DOMAIN, Check.HELDOUT, Check.FORMAT,
                                                                       Check.STRUCTURED)},
             "failed": ", ".join(s.get("failed", [])) or "-",
             "inconclusive": ", ".join(s.get("inconclusive", [])) or "-"} for model, s in report["summary"].items()]


def quality_rows(reports: list[ModelReport]) -> list[dict]:
    """One row per quantized model: top-1 agreement, KL divergence and perplexity against FP32, with verdicts."""
    rows = []
    for r in reports:
        quality = {c.case: c for c in r.checks if c.check == Check.QUALITY}
        if quality:
            rows.append({"model": r.model, **{case: _MARK[c.verdict] + c.value
                                              for case, c in quality.items()}})
    return rows


#: How each verdict is marked in tables.
_MARK = {"pass": "✓ ", "fail": "✗ ", "inconclusive": "? inconclusive: rerun: "}


def checklist_table(reports: list[ModelReport]) -> list[dict]:
    """One row per check and case, one ✓/✗ column per model (for notebooks)."""
    rows: dict[tuple[str, str], dict] = {}
    for r in reports:
        for c in r.checks:
            row = rows.setdefault((c.check, c.case), {"check": c.check, "case": c.case, "threshold": c.threshold})
            row[r.model] = _MARK[c.verdict] + c.value[:60]
    return list(rows.values())


if __name__ == "__main__":
    workers.serve({"edge": _edge_task})
