"""The edge-case check: valid input answered, invalid input refused with the toolkit's own error, no crash, no hang.

The cases run in a child process (:mod:`slmops.toolkit.stages.checklist.edge_worker`) with an idle
timeout, so a crash or a hang is a finding about that case and the rest go on in a new child.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import codec, workers
from slmops.toolkit.core.errors import (
    InputError,
    InvalidOptionError,
    InvalidPromptError,
    PromptTooLongError,
    SlmopsError,
    ToolFailedError,
    ToolTimeoutError,
)
from slmops.toolkit.domain.results.checklist import Bound, Check, CheckResult, Unit, verdict_of
from slmops.toolkit.runtimes.foundry import LoadedModel

#: The worker module of the edge cases.
WORKER = "slmops.toolkit.stages.checklist.edge_worker"

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


def edge_request(case: str, context: int) -> tuple[list[dict[str, str]], int]:
    """The messages and max output tokens of edge case ``case`` for a model of ``context`` tokens.

    Example:
        >>> edge_request("max-tokens-0", 2048)
        ([{'role': 'user', 'content': 'Hi'}], 0)
    """
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


def edge_verdict(case: str, generation=None, error: Exception | None = None) -> tuple[str, bool]:
    """What one edge case did, in words, and whether that is right for the case.

    Args:
        generation: The answer (anything with ``completion_tokens`` and ``finish_reason``), when there was one.
        error: The error it raised instead.

    Example:
        >>> edge_verdict("empty-prompt", error=InvalidPromptError("The prompt is empty."))[1]
        True
    """
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


@dataclass(frozen=True)
class EdgeJob:
    """What the edge-case child is asked (its JSON payload).

    Attributes:
        name: The registered model.
        cache: The Foundry Local cache ("" for the default).
        skip: Edge cases already done (by a child that crashed or hung on the next one).
        seed: The seed of every request.
    """

    name: str
    cache: str
    skip: int
    seed: int


@dataclass(frozen=True)
class EdgeOutcome:
    """One edge case as the child reports it (an event).

    Attributes:
        case: The edge case (see :data:`EDGE_CASES`).
        outcome: What happened, in words.
        passed: Whether that is right for the case.
        seconds: How long it took, s (None when it crashed or hung the child).
    """

    case: str
    outcome: str
    passed: bool
    seconds: float | None


def edge_task(payload: dict, emit) -> None:
    """Worker task: run the edge cases from ``skip`` on (an :class:`EdgeJob`), emitting an :class:`EdgeOutcome` each."""
    job = codec.load(EdgeJob, payload)
    with LoadedModel(job.name, job.cache or None) as model:
        for case, _ in EDGE_CASES[job.skip:]:
            messages, max_tokens = edge_request(case, model.context_length)
            start = time.perf_counter()
            try:
                outcome, passed = edge_verdict(case, model.generate(messages, max_tokens=max_tokens, seed=job.seed))
            except Exception as exc:  # noqa: BLE001 (every outcome is judged; an unexpected one is the finding)
                outcome, passed = edge_verdict(case, error=exc)
            emit(codec.dump(EdgeOutcome(case, outcome, passed, round(time.perf_counter() - start, 3))))


def run_edge_cases(name: str, cache: str | Path | None, timeout_s: float, seed: int,
                   startup_s: float = 60.0) -> list[CheckResult]:
    """Edge cases in a child process; a case that crashes or hangs it fails, and the rest go on in a new one.

    Each case gets ``timeout_s`` from the previous one's answer (the first also gets
    ``startup_s`` for the model to load): the worker's idle timeout. A check's ``value`` is the
    seconds the case took (None when it crashed or hung the child).

    Example:
        >>> [c.case for c in run_edge_cases("smollm2-int4", None, 60.0, 0)][:2]
        ['empty-prompt', 'whitespace-prompt']
    """
    criterion = (f"valid input answered, invalid input refused with the toolkit's own error, within "
                 f"{timeout_s:.0f} s; no crash")
    results: list[CheckResult] = []

    def record(event: dict | EdgeOutcome) -> None:
        row = event if isinstance(event, EdgeOutcome) else codec.load(EdgeOutcome, event)
        results.append(CheckResult(name, Check.EDGE, row.case, row.seconds, Unit.SECONDS, timeout_s, Bound.AT_MOST,
                                   verdict_of(row.passed), criterion, row.outcome))

    while len(results) < len(EDGE_CASES):
        failure = ""
        try:
            workers.run_worker(WORKER, "edge", codec.dump(EdgeJob(name, str(cache or ""), len(results), seed)),
                               name=f"edge cases of {name}", idle_timeout=timeout_s, startup_s=startup_s,
                               on_event=record)
        except ToolTimeoutError:
            failure = f"no answer within {timeout_s:.0f} s: hung, killed"
        except ToolFailedError as exc:
            failure = f"the process died (exit {exc.returncode}): {exc.detail.splitlines()[-1][:200]}"
        if len(results) < len(EDGE_CASES) and failure:  # the case in progress crashed or hung the child
            record(EdgeOutcome(EDGE_CASES[len(results)][0], failure, False, None))
        elif len(results) < len(EDGE_CASES):
            raise SlmopsError(f"The edge-case worker for {name} stopped after {len(results)} of {len(EDGE_CASES)} "
                              "cases without an error; rerun the checklist.")
    return results


