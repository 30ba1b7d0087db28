"""Stage 3: the tutorial's quality checklist as checks with thresholds, measured values and verdicts.

Six checks per registered model, each a :class:`CheckResult`:

1. ``domain``: a cases file (JSONL, one case per line: ``id``, ``messages``, ``expect``);
   content rules ``contains`` (all), ``contains_any``, ``not_contains``, ``exact``.
2. ``format``: the structural rules of the same cases, reported apart: ``json_schema``
   (the answer, or its fenced ```json block, parses and validates), ``regex``, ``max_chars``.
3. ``memory``: RSS of this process over many requests; the fitted growth must stay under
   a stated MB per 100 requests.
4. ``performance``: time per output token from short inputs to half the context must not
   degrade beyond a stated factor.
5. ``edge``: empty, whitespace, over-context, Unicode, control characters, special tokens,
   long histories, max tokens 0 and 1; each answers or raises the toolkit's own error, in
   a child process with a timeout, so a crash or hang is caught and reported.
6. ``quality``: perplexity, top-1 agreement and KL divergence against the FP32 build.

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
from toolkit.core.errors import SlmopsError, ToolFailedError, ToolTimeoutError
from toolkit.core.measure import rss_mb, timestamp
from toolkit.domain.prompts import prompt_text
from toolkit.runtimes import genai
from toolkit.runtimes.foundry import LoadedModel, find_model

BUNDLED_CASES = "smollm2_cases.jsonl"
_MODULE = "toolkit.stages.checklist"  # the worker module of the edge cases (this one)
CONTENT_RULES = ("contains", "contains_any", "not_contains", "exact")
FORMAT_RULES = ("json_schema", "regex", "max_chars")


class Check(StrEnum):
    """The checklist's items."""

    DOMAIN = "domain"
    FORMAT = "format"
    MEMORY = "memory"
    PERFORMANCE = "performance"
    EDGE = "edge"
    QUALITY = "quality"


@dataclass(frozen=True)
class Thresholds:
    """What passing means; every figure is stated in the report next to its measurement.

    Attributes:
        domain_pass_rate: Share of domain cases that must pass.
        format_pass_rate: Share of format cases that must pass.
        leak_mb_per_100: Largest allowed RSS growth, MB per 100 requests (fitted slope).
        slowdown: Largest allowed ratio of time per output token, longest input over shortest.
        top1_min: Smallest greedy top-1 agreement with FP32.
        kl_max: Largest mean KL divergence from FP32 (nats).
        perplexity_ratio_max: Largest perplexity relative to FP32's on the same text.
        edge_timeout_s: Longest an edge case may take before it counts as a hang.
    """

    domain_pass_rate: float = 0.8
    format_pass_rate: float = 0.8
    leak_mb_per_100: float = 5.0
    slowdown: float = 3.0
    top1_min: float = 0.5
    kl_max: float = 1.0
    perplexity_ratio_max: float = 2.0
    edge_timeout_s: float = 60.0


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


def load_cases(path: str | os.PathLike[str] | None = None) -> list[dict]:
    """Read a JSONL cases file (the bundled SmolLM2 cases when ``path`` is None).

    Raises:
        SlmopsError: the file is missing, or a line is not a valid case (the message names the line).
    """
    if path is None:
        text = resources.files("toolkit.domain.data").joinpath(BUNDLED_CASES).read_text()
        source = BUNDLED_CASES
    else:
        file = Path(path)
        if not file.is_file():
            raise SlmopsError(f"No cases file at {file}; pass --cases FILE.jsonl (one JSON case per line).")
        text, source = artifacts.read_text(file), str(file)
    cases = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            assert isinstance(case["messages"], list) and case["messages"]
            assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                       for m in case["messages"])
            unknown = set(case.get("expect", {})) - set(CONTENT_RULES) - set(FORMAT_RULES)
            assert not unknown, f"unknown expectations {sorted(unknown)}"
        except (json.JSONDecodeError, KeyError, AssertionError, TypeError) as exc:
            raise SlmopsError(
                f"{source}:{number} is not a valid case ({exc}): it needs 'messages', a list of "
                "{'role': system|user|assistant, 'content': str}, and 'expect' with any of "
                f"{list(CONTENT_RULES + FORMAT_RULES)}."
            ) from exc
        case.setdefault("id", f"case-{number}")
        case.setdefault("expect", {})
        cases.append(case)
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
    ("empty-prompt", "an empty user message"),
    ("whitespace-prompt", "only spaces, tabs and newlines"),
    ("over-context", "a prompt longer than the model's context"),
    ("unicode", "emoji, CJK and right-to-left text"),
    ("control-characters", "NUL, BEL and an ANSI escape"),
    ("special-tokens", "the chat template's special tokens inside user text"),
    ("long-history", "a 24-turn conversation"),
    ("max-tokens-0", "max output tokens 0"),
    ("max-tokens-1", "max output tokens 1 (must give exactly one token)"),
]


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
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Message number {i}."}
                 for i in range(23)]
        return turns, 8
    return [{**user, "content": "Hi"}], 0 if case == "max-tokens-0" else 1


def _edge_task(job: dict, emit) -> None:
    """Worker task: run the edge cases from index ``skip`` on, emitting one record per case as it ends."""
    with LoadedModel(job["name"], job["cache"] or None) as model:
        for case, _ in EDGE_CASES[job["skip"]:]:
            messages, max_tokens = _edge_request(case, model.context_length)
            start = time.perf_counter()
            try:
                generation = model.generate(messages, max_tokens=max_tokens, seed=job["seed"])
                value = f"answered ({generation.completion_tokens} tokens, {generation.finish_reason})"
                passed = case != "max-tokens-1" or generation.completion_tokens == 1
            except SlmopsError as exc:
                value, passed = f"clear error: {type(exc).__name__}: {exc}", True
            except Exception as exc:  # noqa: BLE001 (an error that is not ours is the finding)
                value, passed = f"unhandled {type(exc).__name__}: {exc}", False
            emit({"case": case, "value": f"{value} in {time.perf_counter() - start:.2f} s", "passed": passed})


def _run_edge_cases(name: str, cache: str | Path | None, timeout_s: float, seed: int,
                    startup_s: float = 60.0) -> list[CheckResult]:
    """Edge cases in a child process; a case that crashes or hangs it fails, and the rest go on in a new one.

    Each case gets ``timeout_s`` from the previous one's answer (the first also gets
    ``startup_s`` for the model to load): the worker's idle timeout.
    """
    threshold = f"answers or raises the toolkit's own error within {timeout_s:.0f} s; no crash"
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


def run_checklist(
    name: str, *, cases: list[dict] | None = None, cache: str | Path | None = None, max_tokens: int = 48,
    seed: int = 0, requests: int = 200, lengths: list[int] | None = None, reference: str | None = None,
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
        thresholds: What passing means.
        progress: Show progress bars.

    Example:
        >>> run_checklist("smollm2-int4", reference="smollm2-fp32").passed
        True
    """
    from tqdm.auto import tqdm

    limits = thresholds or Thresholds()
    cases = cases if cases is not None else load_cases()
    checks: list[CheckResult] = []
    rss: list[float] = []
    ms_per_token: dict[int, float] = {}
    with LoadedModel(name, cache) as model:
        scores: dict[str, list[bool]] = {Check.DOMAIN: [], Check.FORMAT: []}
        for case in tqdm(cases, desc=f"{name}: cases", unit="case", disable=not progress):
            answer = model.generate(case["messages"], max_tokens=max_tokens, seed=seed).text
            for check, rules in ((Check.DOMAIN, CONTENT_RULES), (Check.FORMAT, FORMAT_RULES)):
                if any(rule in case["expect"] for rule in rules) or (check is Check.DOMAIN and not case["expect"]):
                    passed, threshold, score = judge(answer, case["expect"], rules)
                    scores[check].append(passed)
                    checks.append(CheckResult(name, check, case["id"], threshold,
                                              f"score {score:.2f}: {answer.strip()[:300]}", passed))
        for check, rate in ((Check.DOMAIN, limits.domain_pass_rate), (Check.FORMAT, limits.format_pass_rate)):
            if scores[check]:
                share = sum(scores[check]) / len(scores[check])
                checks.append(CheckResult(name, check, f"{check}-overall", f">= {rate:.0%} of cases pass",
                                          f"{sum(scores[check])}/{len(scores[check])} = {share:.0%}",
                                          share >= rate))

        if requests:
            for _ in tqdm(range(requests), desc=f"{name}: memory", unit="req", disable=not progress):
                model.generate([{"role": "user", "content": "Say hello."}], max_tokens=4, seed=seed)
                rss.append(rss_mb())
            growth = growth_mb_per_100(rss)
            checks.append(CheckResult(
                name, Check.MEMORY, "rss-growth", f"<= {limits.leak_mb_per_100} MB per 100 requests (fitted slope "
                f"over the last half of {requests} requests; the first half is warm-up)",
                f"{growth:+.2f} MB per 100 requests (RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB)",
                growth <= limits.leak_mb_per_100))

        context = model.context_length
        lengths = input_lengths(context) if lengths is None else lengths
        if lengths:
            ms_per_token = _per_token_ms(model, lengths, seed, progress)
        if lengths and not ms_per_token:
            checks.append(CheckResult(name, Check.PERFORMANCE, "time-per-token", "answers of 2+ tokens to time",
                                      "every answer stopped after one token: nothing to time", False))
        elif lengths:
            shortest = ms_per_token[min(ms_per_token)]
            worst = max(ms_per_token, key=lambda n: ms_per_token[n])
            ratio = ms_per_token[worst] / shortest
            checks.append(CheckResult(
                name, Check.PERFORMANCE, "time-per-token",
                f"time per output token at most {limits.slowdown}x its value at {min(ms_per_token)} input tokens",
                ", ".join(f"{n}: {ms:.1f} ms" for n, ms in ms_per_token.items()) + f" (worst {ratio:.2f}x)",
                ratio <= limits.slowdown))

    checks += _run_edge_cases(name, cache, limits.edge_timeout_s, seed)
    if reference and reference != name:
        checks += _quality_checks(name, reference, cache, limits)
    return ModelReport(name, checks, rss, ms_per_token, seed)


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


def write_report(reports: list[ModelReport], path: str | os.PathLike[str], thresholds: Thresholds | None = None
                 ) -> dict:
    """Write ``test.json`` (verdict, per-model summary, every check, the plot series) and return its content."""
    report = {
        "passed": all(r.passed for r in reports),
        "summary": {r.model: {"passed": sum(c.passed for c in r.checks), "total": len(r.checks),
                              "failed": [f"{c.check}/{c.case}" for c in r.checks if not c.passed]} for r in reports},
        "thresholds": asdict(thresholds or Thresholds()),
        "checks": [asdict(c) for r in reports for c in r.checks],
        "series": {r.model: {"rss_mb": r.rss_mb, "ms_per_token": r.ms_per_token, "seed": r.seed} for r in reports},
        "timestamp": timestamp(),
    }
    artifacts.write_json(path, report)
    return report


def summary_rows(report: dict) -> list[dict]:
    """One row per model from a written report: passed, total, and which checks failed."""
    return [{"model": model, "passed": s["passed"], "total": s["total"],
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
