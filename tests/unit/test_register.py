"""Stage 2 without a model: the rules that pick the thread count a registration writes."""

from __future__ import annotations

from slmops.toolkit.stages import register as R


def test_thread_choice_rules() -> None:
    assert R.probe_counts(1) == [0, 1] and R.probe_counts(2) == [0, 1, 2] and R.probe_counts(6) == [0, 1, 2, 4, 6]
    probe = [{"threads": 0, "decode_tps": 300.0, "ttft_ms": 90.0}, {"threads": 1, "decode_tps": 181.0, "ttft_ms": 227.0},
             {"threads": 2, "decode_tps": 238.0, "ttft_ms": 164.0}, {"threads": 4, "decode_tps": 238.0, "ttft_ms": 150.0}]
    assert R.pick_threads(probe) == 4  # never the default; a tie goes to the quicker first token
    assert R.ThreadChoice(4, tuple(probe)).speedup == round(238 / 300, 3)
