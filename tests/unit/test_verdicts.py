"""Checklist verdicts that mean what they say and do not flip between runs."""

from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import FoundryRequestError, InvalidOptionError, InvalidPromptError, PromptTooLongError
from slmops.toolkit.runtimes.foundry import Generation
from slmops.toolkit.stages import checklist as E
from slmops.toolkit.stages import register
from slmops.toolkit.stages.convert import ConvertSpec, Precision, convert


def answer(tokens: int = 3) -> Generation:
    return Generation("text", 5, tokens, 0.01, 0.02, "length")


def test_valid_edge_inputs_must_be_answered_and_invalid_ones_refused_with_the_right_error() -> None:
    assert E.edge_verdict("unicode", answer())[1]
    assert not E.edge_verdict("unicode", error=FoundryRequestError("runtime crashed"))[1]  # the runtime's failure
    assert not E.edge_verdict("long-history", error=InvalidPromptError("refused"))[1]  # refusing valid input
    assert E.edge_verdict("empty-prompt", error=InvalidPromptError("empty"))[1]
    assert not E.edge_verdict("empty-prompt", answer())[1]  # answering what must be refused
    assert not E.edge_verdict("over-context", error=InvalidOptionError("x", 1, "y"))[1]  # the wrong refusal
    assert E.edge_verdict("over-context", error=PromptTooLongError(600, 8, 512))[1]
    assert E.edge_verdict("max-tokens-1", answer(1))[1] and not E.edge_verdict("max-tokens-1", answer(2))[1]
    assert set(E.MUST_REFUSE) < {case for case, _ in E.EDGE_CASES}


def test_the_long_history_fits_the_context_it_is_built_for() -> None:
    for context in (512, 2048, 8192):
        turns, _ = E.edge_request("long-history", context)
        assert len(turns) % 2 == 1 and turns[-1]["role"] == "user" and 12 * len(turns) <= context // 2 + 12


class FakeModel:
    """Stands in for the model around the memory check: each request holds on to memory as told."""

    name = "fake"

    def __init__(self, grow_at: dict[int, int]) -> None:
        self.grow_at, self.calls, self.kept = grow_at, 0, []

    def generate(self, *_args: object, **_kwargs: object) -> Generation:
        self.calls += 1
        size = self.grow_at.get(self.calls, self.grow_at.get(0, 0))
        if size:
            # Fresh pages from the kernel, each written: resident whatever the heap had free before.
            pages = mmap.mmap(-1, size)
            for offset in range(0, size, mmap.PAGESIZE):
                pages[offset] = 1
            self.kept.append(pages)
        return answer()


def test_the_memory_check_tells_an_arena_that_settles_from_a_leak() -> None:
    limits = E.Thresholds()
    # An arena: one 40 MB step late in the run, then flat: one window's growth never decides.
    arena = E.memory_check(FakeModel({35: 40_000_000}), 40, limits, 0, False, rss := [])
    assert arena.passed and "levels off" in arena.detail and len(rss) == 40
    assert arena.unit == "MiB per 100 requests" and arena.value < arena.threshold == limits.leak_mib_per_100
    # A leak: 1 MB kept by every request grows in every window.
    leak = E.memory_check(FakeModel({0: 1_000_000}), 40, limits, 0, False, [])
    assert not leak.passed and not leak.inconclusive and "a leak" in leak.detail and leak.value > leak.threshold
    assert "rose on 32 of 32 requests after warm-up, by 1.0 MiB" in leak.detail  # how it grew: on every request
    quiet = E.memory_check(FakeModel({}), 40, limits, 0, False, rss := [])
    assert quiet.passed and len(rss) == 40  # no more windows when nothing grew


def test_time_per_token_is_judged_against_the_reference_rounds_of_the_same_run() -> None:
    limits = E.Thresholds()
    fp32 = [(30.0, 36.0), (30.5, 36.4), (29.8, 35.9), (30.2, 36.1)]  # attention adds 6 ms per token at 4096 tokens
    int4 = [(2.0, 7.8), (2.1, 8.0), (1.9, 7.7), (2.0, 7.9)]  # 3.9x its own short-input time: the same 6 ms
    assert not E.performance_check("m-int4", int4, limits, None, (64, 4096)).passed  # the absolute 3x rule fails it
    judged = E.performance_check("m-int4", int4, limits, ("m-fp32", fp32), (64, 4096))
    assert judged.passed and "m-fp32" in judged.criterion and judged.unit == "ratio" and judged.value <= 1.0
    slow = [(2.0, 20.0), (2.1, 20.5), (1.9, 19.8), (2.0, 20.2)]  # adds 18 ms where FP32 adds 6: a real degradation
    assert not E.performance_check("m-int4", slow, limits, ("m-fp32", fp32), (64, 4096)).passed
    assert E.performance_check("m-fp32", fp32, limits, ("m-fp32", fp32), (64, 4096)).passed  # absolute rule


@pytest.fixture(scope="module")
def tiny_pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("verdicts")
    names = []
    for precision in (Precision.FP32, Precision.INT4):
        built = convert(ConvertSpec(tiny_model, out / str(precision), precision), progress=False).output_dir
        names.append(register.register(built, f"verdict-{precision}", force=True).name)
    return names


@pytest.mark.slow
def test_the_same_models_get_the_same_verdicts_in_five_runs(tiny_pair: list[str]) -> None:
    runs = []
    for _ in range(5):
        reports = E.run_checklists(tiny_pair, reference=tiny_pair[0], requests=40, progress=False)
        runs.append([(c.model, c.check, c.case, c.passed) for r in reports for c in r.checks])
    assert all(run == runs[0] for run in runs[1:]), [
        [v for v, w in zip(run, runs[0], strict=True) if v != w] for run in runs[1:]]
    assert len(runs[0]) > 20
