"""Stage 2 without a model: the rules that pick the thread count a registration writes."""

from __future__ import annotations

from slmops.toolkit.domain.results.registration import ThreadSpeed
from slmops.toolkit.stages.register_threads import ThreadChoice, pick_threads, probe_counts


def test_thread_choice_rules() -> None:
    assert probe_counts(1) == [0, 1] and probe_counts(2) == [0, 1, 2] and probe_counts(6) == [0, 1, 2, 4, 6]
    probe = [ThreadSpeed(0, 300.0, 90.0), ThreadSpeed(1, 181.0, 227.0), ThreadSpeed(2, 238.0, 164.0),
             ThreadSpeed(4, 238.0, 150.0)]
    assert pick_threads(probe) == 4  # never the default; a tie goes to the quicker first token
    assert ThreadChoice(4, tuple(probe)).speedup == round(238 / 300, 3)
