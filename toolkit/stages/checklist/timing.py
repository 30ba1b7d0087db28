"""The performance check: time per output token at a long input against a short one, judged against FP32's.

Every model (and the FP32 reference) is timed as its fixed-length registration, interleaved
round by round, so a burst of load from other processes hits them alike; the verdict is a
median over rounds decided outside its spread (:func:`~slmops.toolkit.stages.checklist.statistics.decide`).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from pathlib import Path

from slmops.toolkit.domain.prompts import prompt_text
from slmops.toolkit.domain.results.bench import decode_tps
from slmops.toolkit.domain.results.checklist import Bound, Check, CheckResult, Thresholds, Unit, Verdict
from slmops.toolkit.runtimes.foundry import LoadedModel, fixed_length_registration
from slmops.toolkit.stages.checklist.statistics import decide

#: The long input the performance check times by default (at most half the context). At 1024 tokens attention already adds a resolved share
#: of the bundled model's time per token (its KV cache reads 47 MB a token against 150-540 MB of
#: weights); half the context (4096) only multiplies both sides of the judged ratio by four, at
#: four times the prompt pass in every round, and decides nothing more.
DECISIVE_LONG = 1024


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


def _allowed_ms(short: float, limits: Thresholds, ref: tuple[float, float] | None) -> float:
    """What a long input may add per output token (ms) in one round: against the reference's rounds, else its own."""
    if ref is None:  # no reference in the run: the stated factor over the model's own short-input time
        return max((limits.slowdown - 1) * short, limits.min_added_ms)
    ref_added = max(0.0, ref[1] - ref[0])
    return max(limits.added_vs_reference * ref_added + limits.noise_share * short, limits.min_added_ms)


def share_of_allowance(short: float, long: float, limits: Thresholds, ref: tuple[float, float] | None) -> float:
    """What a long input adds per output token as a share of what it may add (<= 1 passes), for one round.

    A share rather than a difference in ms: a burst of load from other processes that slows a
    whole round slows what the long input adds and what it may add alike, so the share holds
    where a difference would grow with the load (as a difference in ms did run to run on the same builds, flipping
    a verdict between pass and inconclusive).

    Example:
        >>> share_of_allowance(2.0, 8.0, Thresholds(), (30.0, 36.0))  # adds 6 ms; 1.5 x 6 + 10% of 2 allowed
        0.6521739130434783
        >>> share_of_allowance(4.0, 16.0, Thresholds(), (60.0, 72.0))  # the same round twice as slow
        0.6521739130434783
    """
    return (long - short) / _allowed_ms(short, limits, ref)


def performance_check(name: str, rounds: list[tuple[float, float]], limits: Thresholds,
                       reference: tuple[str, list[tuple[float, float]]] | None,
                       lengths: tuple[int, int]) -> CheckResult:
    """Time per output token at the longest input against the shortest, per interleaved round, against a threshold.

    Args:
        name: The model.
        rounds: ``(short, long)`` milliseconds per output token, one pair per round.
        reference: The FP32 build's name and rounds, measured interleaved with these (same round, same load).
        lengths: ``(shortest, longest)`` input tokens.

    The statistic is the median over rounds of what the long input adds as a share of what it may
    add (:func:`share_of_allowance`; 1 is the threshold), decided outside its spread
    (:func:`decide`), else inconclusive.

    Example:
        >>> performance_check("m-int4", [(1.0, 1.2)] * 5, Thresholds(), None, (64, 1024)).verdict
        <Verdict.PASS: 'pass'>
    """
    shortest, longest = lengths
    if not rounds:
        return CheckResult(name, Check.PERFORMANCE, "time-per-token", None, Unit.NONE, None, Bound.AT_MOST,
                           Verdict.FAIL, "answers of 2+ tokens to time",
                           "no request generated two tokens: nothing to time")
    ref_name, ref_rounds = reference or ("", [])
    judged_by_ref = bool(ref_rounds) and ref_name != name
    refs = [ref_rounds[i] if judged_by_ref and i < len(ref_rounds) else None for i in range(len(rounds))]
    shares = [share_of_allowance(s, l, limits, ref) for (s, l), ref in zip(rounds, refs, strict=True)]
    decision = decide(shares, 1.0, limits.spread_sigmas)
    allowed = statistics.median(_allowed_ms(s, limits, ref) for (s, _), ref in zip(rounds, refs, strict=True))
    short_ms = statistics.median(s for s, _ in rounds)
    long_ms = statistics.median(l for _, l in rounds)
    curve = f"{shortest}: {short_ms:.3g} ms, {longest}: {long_ms:.3g} ms per output token (medians of {len(rounds)})"
    criterion_tail = (f"; the median over rounds of what it adds as a share of that, at most 1 beyond "
                      f"{limits.spread_sigmas:g} standard errors")
    if judged_by_ref:
        ref_added = statistics.median(max(0.0, l - s) for s, l in ref_rounds)
        criterion = (f"the time {longest} input tokens add per output token (over {shortest}) at most "
                     f"{limits.added_vs_reference}x what they add to {ref_name}, measured interleaved in the same "
                     f"rounds (+{limits.noise_share:.0%} of the short-input time; {limits.min_added_ms} ms always "
                     f"allowed)" + criterion_tail)
        detail = (f"{curve}: adds {long_ms - short_ms:+.2f} ms ({ref_name} adds {ref_added:.2f}; {allowed:.2f} "
                  f"allowed): {decision.words('of the allowance')}")
    else:
        criterion = (f"time per output token at {longest} input tokens at most {limits.slowdown}x its value at "
                     f"{shortest} (or at most {limits.min_added_ms} ms more)" + criterion_tail)
        detail = (f"{curve} ({long_ms / short_ms:.2f}x; {allowed:.2f} ms allowed): "
                  f"{decision.words('of the allowance')}")
    return CheckResult(name, Check.PERFORMANCE, "time-per-token", decision.value, Unit.RATIO, 1.0, Bound.AT_MOST,
                       decision.verdict, criterion, detail, samples=len(rounds), spread=decision.finite_spread)


def per_token_ms(model: LoadedModel, prompt: str, tokens: int, seed: int) -> float | None:
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
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    if len(gaps) >= max(2, tokens // 2):
        return statistics.median(gaps) * 1000
    rate = decode_tps(generation.completion_tokens, generation.ttft_s, generation.total_s) if generation else 0.0
    return 1000 / rate if rate else None


def _judged_lengths(lengths: list[int] | None, context: int) -> list[int]:
    """The input lengths to time, shortest first: ``lengths``, or by default up to :data:`DECISIVE_LONG`.

    The judged ratio (what a long input adds against what it adds to FP32) does not depend on
    the length: attention's cost grows linearly with it for every precision alike. So by default
    the long input is where that cost is already well resolved (DECISIVE_LONG), not half the context.
    """
    return sorted(set(lengths) if lengths is not None else
                  {n for n in input_lengths(context) if n < DECISIVE_LONG} | {min(DECISIVE_LONG, context // 2)})


def _time_round(model: LoadedModel, prompts: dict[int, str], wanted: list[int], index: int, tokens: int, seed: int,
                rounds: list[tuple[float, float]], curve: dict[int, float]) -> int:
    """One model's turn in round ``index``: the shortest and the longest input (their order turns each round).

    The pair goes to ``rounds`` when both were timed; in the first round the lengths between are
    timed once into ``curve``, for the plot only. Returns the requests sent.
    """
    shortest, longest = wanted[0], wanted[-1]
    figures = {}
    sent = 0
    for length in ((shortest, longest) if index % 2 == 0 else (longest, shortest)):
        figures[length] = per_token_ms(model, prompts[length], tokens, seed)
        sent += 1
    if figures[shortest] is not None and figures[longest] is not None:
        rounds.append((figures[shortest], figures[longest]))
    if index == 0:
        for length in wanted[1:-1]:  # the curve between: once, for the plot
            curve[length] = per_token_ms(model, prompts[length], tokens, seed)
            sent += 1
    return sent


def _curve(curve: dict[int, float], rounds: list[tuple[float, float]], shortest: int, longest: int) -> dict[int, float]:
    """A model's curve: the medians over rounds at the shortest and longest input, with the lengths between."""
    if rounds:
        curve[shortest] = round(statistics.median(s for s, _ in rounds), 3)
        curve[longest] = round(statistics.median(l for _, l in rounds), 3)
    return {k: round(v, 3) for k, v in sorted(curve.items()) if v is not None}


def performance_checks(names: list[str], reference: str | None, cache: str | Path | None,
                        lengths: list[int] | None, limits: Thresholds, seed: int, progress: bool,
                        tokens: int = 16) -> tuple[dict[str, CheckResult], dict[str, dict[int, float]], dict[str, int]]:
    """Time per output token of every model and the reference, interleaved round by round.

    Each model runs as its fixed-length registration
    (:func:`~slmops.toolkit.runtimes.foundry.fixed_length_registration`), so every request generates
    exactly ``tokens`` tokens whatever the fine-tune's style. A round asks every model (in an
    order that turns each round) for the shortest and the longest input, so a burst of load from
    other processes hits the models and their reference alike. Rounds go on, from
    ``limits.timing_rounds[0]`` to ``[1]``, while a verdict is still within its spread; those
    rounds time only the models still undecided and the reference they are judged against (a
    decided model's rounds, and so its verdict, stay as they were). The lengths between are
    measured once, for the curve only: they decide nothing.

    Returns:
        ``(check per model, curve per model, requests per model)``.
    """
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    timed = list(dict.fromkeys([*names, *([reference] if reference else [])]))
    with contextlib.ExitStack() as stack:
        models = {n: stack.enter_context(LoadedModel(stack.enter_context(fixed_length_registration(n, cache)), cache))
                  for n in timed}
        first = models[timed[0]]
        tokenizer = Tokenizer.from_file(str(Path(first.model.get_path()) / "tokenizer.json"))
        context = min(m.context_length or (1 << 20) for m in models.values())
        wanted = _judged_lengths(lengths, context)
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
        active = list(timed)
        for index in range(high):
            turn = index % len(active)
            for n in active[turn:] + active[:turn]:
                requests[n] += _time_round(models[n], prompts, wanted, index, tokens, seed, rounds[n], curves[n])
            bar.update()
            ref_rounds = rounds.get(reference, []) if reference else []
            checks = {n: performance_check(n, rounds[n], limits, (reference, ref_rounds) if reference else None,
                                            (shortest, longest)) for n in names}
            if index + 1 >= low and not any(c.inconclusive for c in checks.values()):
                break
            if index + 1 >= low:
                bar.total = high
                undecided = {n for n, c in checks.items() if c.inconclusive}
                active = [n for n in timed if n in undecided or n == reference]
        bar.close()
    return checks, {n: _curve(curves[n], rounds[n], shortest, longest) for n in timed}, requests
