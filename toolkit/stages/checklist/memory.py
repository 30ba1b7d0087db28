"""The memory check: process RSS over windows of requests; a leak grows in every window, an arena levels off."""

from __future__ import annotations

import statistics

from slmops.toolkit.core import system
from slmops.toolkit.core.measure import rss_mib
from slmops.toolkit.domain.results.checklist import Bound, Check, CheckResult, Thresholds, Unit, Verdict
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages.checklist.statistics import Decision, decide, window_growth


def _reading(decision: Decision, keeps_growing: bool, growth: list[float], rss: list[float], per: int,
             limit: float) -> tuple[Verdict, str]:
    """The verdict and what the growth reads as: flat, an arena levelling off, a leak, or not settled."""
    if decision.verdict is Verdict.PASS:
        return Verdict.PASS, "; levels off: an arena, not a leak" if any(g > limit for g in growth) else "; flat"
    if decision.verdict is Verdict.FAIL and keeps_growing:
        rises = [b - a for a, b in zip(rss[per - 1:], rss[per:], strict=False) if b - a > 0.5]
        return Verdict.FAIL, (f"; it grew in every window: a leak (memory rose on {len(rises)} of {len(rss) - per} "
                              f"requests after warm-up, by {statistics.median(rises) if rises else 0.0:.1f} MiB in the "
                              "median; an allocator's pool growing as steadily reads the same, and a longer run tells "
                              "them apart)")
    return Verdict.INCONCLUSIVE, f"; growth has not settled within {len(rss)} requests: inconclusive: rerun with more requests"


def memory_check(model: LoadedModel, requests: int, limits: Thresholds, seed: int, progress: bool,
                 rss: list[float]) -> CheckResult:
    """RSS over windows of requests: a leak grows in every window, an arena grows in steps that level off.

    The requests are split into ``limits.memory_windows`` windows; the first is warm-up. The
    statistic is the median growth of the last three windows' high-water marks (MiB per 100
    requests), judged outside its spread (:func:`~slmops.toolkit.stages.checklist.statistics.decide`).
    A leak is a fail only when every one of the last three windows grew (it keeps growing
    linearly); growth that has not settled either way gets up to as many windows again, then is
    inconclusive. One window alone never decides (seen: one window +43.65 MiB per 100 requests,
    the next +16.61, then flat: an arena).

    Args:
        model: A loaded model (anything with ``name`` and ``generate``).
        requests: Requests to send (more windows may be added).
        rss: Receives the process RSS (MiB) after each request.

    Example:
        >>> memory_check(model, 120, Thresholds(), 0, False, []).verdict
        <Verdict.PASS: 'pass'>
    """
    from tqdm.auto import tqdm

    # Memory in use, not glibc's heaps keeping freed buffers: its self-raising mmap threshold made one
    # build's RSS step up 8.3 MiB every ~12 requests in some runs and stay flat in others, and with the
    # threshold fixed, 2 MiB steps of freed heap remained (a "leak" of +9 MiB per 100 requests in one run).
    system.fix_mmap_threshold()
    windows = max(4, limits.memory_windows)
    per = max(1, requests // windows)

    def measure(count: int, label: str) -> None:
        for _ in tqdm(range(count), desc=f"{model.name}: {label}", unit="req", disable=not progress):
            model.generate([{"role": "user", "content": "Say hello."}], max_tokens=4, seed=seed)
            system.release_free_memory()
            rss.append(rss_mib())

    measure(max(requests, per * windows), "memory")
    limit = limits.leak_mib_per_100
    for extra in range(windows + 1):
        levels, growth = window_growth(rss, per)
        recent = growth[-3:]
        decision = decide(recent, limit, limits.spread_sigmas)
        keeps_growing = all(g > limit / 2 for g in recent)
        if decision.verdict is Verdict.PASS or (decision.verdict is Verdict.FAIL and keeps_growing) or extra == windows:
            break
        measure(per, "memory (one more window)")
    criterion = (f"median growth of the last 3 windows' high-water RSS <= {limit} MiB per 100 requests, "
                 f"beyond {limits.spread_sigmas:g} standard errors ({per} requests a window, the first is warm-up); "
                 "a leak must grow in each of the last 3 windows")
    detail = (f"growth per window {', '.join(f'{g:+.2f}' for g in growth)} MiB per 100 requests (high-water "
              f"{', '.join(f'{v:.0f}' for v in levels)} MiB over {len(rss)} requests): median of the last 3 "
              f"{decision.words('MiB per 100')}")
    verdict, reading = _reading(decision, keeps_growing, growth, rss, per, limit)
    detail += reading
    return CheckResult(model.name, Check.MEMORY, "rss-growth", decision.value, Unit.MIB_PER_100_REQUESTS, limit,
                       Bound.AT_MOST, verdict, criterion, detail, samples=len(recent), spread=decision.finite_spread)
