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
3. ``memory``: RSS of this process over many requests; the fitted growth must stay under
   a stated MB per 100 requests, and growth above it must repeat over as many requests
   again before it counts (an arena that grows in a step and settles is not a leak).
4. ``performance``: time per output token from short inputs to half the context, judged
   against the FP32 build's curve measured in the same run (:func:`run_checklists`), else
   against a stated factor.
5. ``edge``: empty, whitespace, over-context, Unicode, control characters, special tokens,
   long histories, max tokens 0 and 1; valid input must be answered and invalid input refused
   with the toolkit's own error, in a child process with a timeout, so a crash or hang is
   caught and reported.
6. ``quality``: perplexity, top-1 agreement and KL divergence against the FP32 build.
7. ``stop``: the free answers to the cases must end with finish_reason ``stop`` (the model
   ended its turn on a stop token) before max tokens; a model that never stops fails, whatever
   its text.

Decoding is greedy with a recorded seed, so a rerun gives the same answers.
"""

from __future__ import annotations

import json
import os
import re
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


@dataclass(frozen=True)
class CheckResult:
    """One check of the checklist.

    Attributes:
        model: Registered model name.
        check: Checklist item (see :class:`Check`).
        case: Case id, or the check's own name for a whole-model figure.
        threshold: What passing means, in words.
        value: What was measured (an answer, a figure, an error).
        passed: The verdict.
    """

    model: str
    check: str
    case: str
    threshold: str
    value: str
    passed: bool


@dataclass(frozen=True)
class ModelReport:
    """Every check of one model plus the series behind the plots.

    Attributes:
        model: Registered model name.
        checks: The verdicts.
        rss_mb: Process RSS after each request of the memory check.
        ms_per_token: Input tokens to milliseconds per output token.
        seed: The seed every request used.
    """

    model: str
    checks: list[CheckResult]
    rss_mb: list[float] = field(default_factory=list)
    ms_per_token: dict[int, float] = field(default_factory=dict)
    seed: int = 0

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)


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
                    progress: bool) -> list[CheckResult]:
    """Domain and format: each case's answer against its expectations, then the pass rate of each."""
    from tqdm.auto import tqdm

    checks: list[CheckResult] = []
    scores: dict[str, list[bool]] = {Check.DOMAIN: [], Check.HELDOUT: [], Check.FORMAT: []}
    finishes: list[tuple[str, int]] = []
    for case in tqdm(cases, desc=f"{model.name}: cases", unit="case", disable=not progress):
        answer, reason, tokens = _generation(model, case, max_tokens, seed)
        finishes.append((reason, tokens))
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


def _memory_check(model: LoadedModel, requests: int, limits: Thresholds, seed: int, progress: bool,
                  rss: list[float]) -> CheckResult:
    """RSS over ``requests`` requests; growth over the limit is confirmed over as many again before it counts.

    ONNX Runtime's arena grows in steps and then settles; over a short run one late step
    looks like a leak (seen: +0.19 MB one run, +7.4 MB the next, same model). A leak keeps
    growing, so a suspected leak must grow in the confirmation run too.
    """
    from tqdm.auto import tqdm

    def measure(count: int, label: str) -> None:
        for _ in tqdm(range(count), desc=f"{model.name}: {label}", unit="req", disable=not progress):
            model.generate([{"role": "user", "content": "Say hello."}], max_tokens=4, seed=seed)
            rss.append(rss_mb())

    measure(requests, "memory")
    growth = growth_mb_per_100(rss)
    threshold = (f"<= {limits.leak_mb_per_100} MB per 100 requests (fitted slope over the last half of {requests} "
                 "requests, the first half is warm-up; growth above it must repeat over as many requests again)")
    value = f"{growth:+.2f} MB per 100 requests (RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB)"
    if growth <= limits.leak_mb_per_100:
        return CheckResult(model.name, Check.MEMORY, "rss-growth", threshold, value, True)
    measure(requests, "memory (confirming)")
    again = growth_mb_per_100(rss[-requests:], skip=0.0)
    leak = again > limits.leak_mb_per_100
    verdict = "it kept growing: a leak" if leak else "then flat: the arena settled, not a leak"
    return CheckResult(model.name, Check.MEMORY, "rss-growth", threshold,
                       f"{value}; over {requests} more: {again:+.2f} MB per 100, {verdict}", not leak)


def _performance_check(name: str, ms_per_token: dict[int, float], limits: Thresholds,
                       reference: tuple[str, dict[int, float]] | None) -> CheckResult:
    """Time per output token from the shortest to the longest input, judged against the reference's curve."""
    if not ms_per_token:
        return CheckResult(name, Check.PERFORMANCE, "time-per-token", "answers of 2+ tokens to time",
                           "every answer stopped after one token: nothing to time", False)
    shortest, longest = min(ms_per_token), max(ms_per_token)
    curve = ", ".join(f"{n}: {ms:.3g} ms" for n, ms in ms_per_token.items())
    ref_name, ref_curve = reference or ("", {})
    if shortest in ref_curve and longest in ref_curve and ref_name != name:
        added = ms_per_token[longest] - ms_per_token[shortest]
        ref_added = max(0.0, ref_curve[longest] - ref_curve[shortest])
        allowed = max(limits.added_vs_reference * ref_added + limits.noise_share * ms_per_token[shortest],
                      limits.min_added_ms)
        return CheckResult(
            name, Check.PERFORMANCE, "time-per-token",
            f"the time {longest} input tokens add per output token (over {shortest}) at most "
            f"{limits.added_vs_reference}x what they add to {ref_name} in the same run "
            f"(+{limits.noise_share:.0%} of the short-input time for noise; {limits.min_added_ms} ms always allowed)",
            f"{curve}: adds {added:+.2f} ms (allowed {allowed:.2f}; {ref_name} adds {ref_added:.2f} ms)",
            added <= allowed)
    worst = max(ms_per_token.values())
    ratio = worst / ms_per_token[shortest]
    return CheckResult(
        name, Check.PERFORMANCE, "time-per-token",
        f"time per output token at most {limits.slowdown}x its value at {shortest} input tokens "
        f"(or at most {limits.min_added_ms} ms more)",
        f"{curve} (worst {ratio:.2f}x, {worst - ms_per_token[shortest]:+.3f} ms)",
        ratio <= limits.slowdown or worst - ms_per_token[shortest] <= limits.min_added_ms)


def run_checklist(
    name: str, *, cases: list[dict] | None = None, cache: str | Path | None = None, max_tokens: int = 48,
    seed: int = 0, requests: int = DEFAULTS.checklist_requests, lengths: list[int] | None = None,
    reference: str | None = None, reference_curve: dict[int, float] | None = None,
    thresholds: Thresholds | None = None, progress: bool = True,
) -> ModelReport:
    """Run the whole checklist against a registered model (greedy, ``seed`` recorded).

    Args:
        name: Registered model.
        cases: Domain/format cases (the bundled ones by default).
        cache: Foundry Local cache.
        max_tokens: Answer budget per case.
        seed: Seed for every request.
        requests: Requests of the memory check (0 skips it).
        lengths: Input lengths of the performance check (default: 64 up to half the context; [] skips it).
        reference: Registered FP32 model for the quality check (None skips it).
        reference_curve: The reference's time per output token by input length, measured in the
            same run (see :func:`run_checklists`); the performance check is judged against it.
        thresholds: What passing means.
        progress: Show progress bars.

    Raises:
        InvalidOptionError: a count out of range (before the model is loaded).

    Example:
        >>> run_checklist("smollm2-int4", reference="smollm2-fp32").passed
        True
    """
    if type(requests) is not int or requests < 0:
        raise InvalidOptionError("requests", requests, "a whole number >= 0 (0 skips the memory check)")
    if type(max_tokens) is not int or max_tokens < 1:
        raise InvalidOptionError("max_tokens", max_tokens, "a whole number >= 1")
    if lengths is not None and any(type(n) is not int or n < 1 for n in lengths):
        raise InvalidOptionError("lengths", lengths, "input lengths in tokens, each a whole number >= 1")
    limits = thresholds or Thresholds()
    cases = cases if cases is not None else load_cases()
    rss: list[float] = []
    ms_per_token: dict[int, float] = {}
    with LoadedModel(name, cache) as model:
        checks = _content_checks(model, cases, limits, max_tokens, seed, progress)
        if requests:
            checks.append(_memory_check(model, requests, limits, seed, progress, rss))
        lengths = input_lengths(model.context_length) if lengths is None else lengths
        if lengths:
            ms_per_token = _per_token_ms(model, lengths, seed, progress)
            curve = (reference, reference_curve) if reference and reference_curve else None
            checks.append(_performance_check(name, ms_per_token, limits, curve))
    checks += _run_edge_cases(name, cache, limits.edge_timeout_s, seed)
    if reference and reference != name:
        checks += _quality_checks(name, reference, cache, limits)
    return ModelReport(name, checks, rss, ms_per_token, seed)


def run_checklists(names: list[str], *, reference: str | None = None, **options) -> list[ModelReport]:
    """:func:`run_checklist` for each model, the reference first, so the others are judged against its curve.

    Args:
        names: Registered models (reports come back in this order).
        reference: The FP32 model: the quality check's reference, and the performance check's
            when it is among ``names``.
        options: Passed to :func:`run_checklist`.

    Example:
        >>> [r.model for r in run_checklists(["smollm2-int4", "smollm2-fp32"], reference="smollm2-fp32")]
        ['smollm2-int4', 'smollm2-fp32']
    """
    order = sorted(names, key=lambda n: n != reference)
    done: dict[str, ModelReport] = {}
    for name in order:
        curve = done[reference].ms_per_token if reference in done else None
        done[name] = run_checklist(name, reference=reference, reference_curve=curve, **options)
    return [done[name] for name in names]


def _per_token_ms(model, lengths: list[int], seed: int, progress: bool) -> dict[int, float]:
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    tokenizer = Tokenizer.from_file(str(Path(model.model.get_path()) / "tokenizer.json"))
    figures = {}
    for length in tqdm(lengths, desc=f"{model.name}: input lengths", unit="len", disable=not progress):
        prompt = prompt_text(tokenizer, length)
        best = float("inf")
        for _ in range(2):  # the faster of two: a shared machine adds noise, never speed
            generation = model.generate([{"role": "user", "content": prompt}], max_tokens=16, seed=seed)
            if generation.completion_tokens > 1:
                per_token = (generation.total_s - generation.ttft_s) / (generation.completion_tokens - 1)
                best = min(best, per_token * 1000)
        if best < float("inf"):
            figures[length] = round(best, 3)
    return figures


def _quality_checks(name: str, reference: str, cache: str | Path | None, limits: Thresholds) -> list[CheckResult]:
    ref_dir, model_dir = Path(find_model(reference, cache).get_path()), Path(find_model(name, cache).get_path())
    (a,) = genai.agreement(ref_dir, {name: model_dir})
    ratio = a.perplexity / a.reference_perplexity
    text = f"on the bundled text ({a.tokens} tokens) against {reference}"
    return [
        CheckResult(name, Check.QUALITY, "top1-agreement", f">= {limits.top1_min} {text}", f"{a.top1:.3f}",
                    a.top1 >= limits.top1_min),
        CheckResult(name, Check.QUALITY, "kl-divergence", f"<= {limits.kl_max} nats {text}", f"{a.kl:.4f}",
                    a.kl <= limits.kl_max),
        CheckResult(name, Check.QUALITY, "perplexity", f"<= {limits.perplexity_ratio_max}x the reference's "
                    f"{a.reference_perplexity:.2f}", f"{a.perplexity:.2f} ({ratio:.2f}x)",
                    ratio <= limits.perplexity_ratio_max),
    ]


#: Largest share of the domain cases the base model (not fine-tuned) may pass before the cases count as testing nothing.
CONTROL_MAX_PASS = 0.1


def run_control(name: str, cases: list[dict], *, cache: str | Path | None = None, seed: int = DEFAULTS.seed,
                max_tokens: int = 128, progress: bool = True) -> dict:
    """A negative control: the base model (not fine-tuned) answers the same domain and held-out cases.

    If the base passes them, they test nothing about the fine-tune, and the verdict says so.

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
        "summary": {r.model: {"passed": sum(c.passed for c in r.checks), "total": len(r.checks),
                              "failed": [f"{c.check}/{c.case}" for c in r.checks if not c.passed],
                              "rates": {c.check: c.value for c in r.checks if c.case == f"{c.check}-overall"}}
                    for r in reports},
        "thresholds": asdict(thresholds or Thresholds()),
        "checks": [asdict(c) for r in reports for c in r.checks],
        "series": {r.model: {"rss_mb": r.rss_mb, "ms_per_token": r.ms_per_token, "seed": r.seed} for r in reports},
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
             "failed": ", ".join(s.get("failed", [])) or "-"} for model, s in report["summary"].items()]


def quality_rows(reports: list[ModelReport]) -> list[dict]:
    """One row per quantized model: top-1 agreement, KL divergence and perplexity against FP32, with verdicts."""
    rows = []
    for r in reports:
        quality = {c.case: c for c in r.checks if c.check == Check.QUALITY}
        if quality:
            rows.append({"model": r.model, **{case: ("✓ " if c.passed else "✗ ") + c.value
                                              for case, c in quality.items()}})
    return rows


def checklist_table(reports: list[ModelReport]) -> list[dict]:
    """One row per check and case, one ✓/✗ column per model (for notebooks)."""
    rows: dict[tuple[str, str], dict] = {}
    for r in reports:
        for c in r.checks:
            row = rows.setdefault((c.check, c.case), {"check": c.check, "case": c.case, "threshold": c.threshold})
            row[r.model] = ("✓ " if c.passed else "✗ ") + c.value[:60]
    return list(rows.values())


if __name__ == "__main__":
    workers.serve({"edge": _edge_task})
