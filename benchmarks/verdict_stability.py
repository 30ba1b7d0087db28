"""How far the performance check's verdict lies from its threshold, by two statistics on the same rounds (issue 29).

The checklist's performance check times every model and its FP32 reference in interleaved
rounds (:func:`slmops.toolkit.stages.checklist.timing.performance_checks`). This benchmark runs it on
registered builds, quiet and with a process that burns one core in bursts (2.5 s on, 2 s off:
another job on a shared machine), and judges the same rounds two ways:

- ``share``: what the long input adds per output token as a share of what it may add (the check's statistic);
- ``difference``: what it adds minus what it may add, in ms (the statistic before).

For each it prints the median, its spread (three standard errors) and the margin in spreads,
``|median - threshold| / spread``: above 1 the verdict is decided, below it is inconclusive.

    .venv/bin/slmops demo        # registers smollm2-fp32, smollm2-int8 and smollm2-int4
    .venv/bin/python benchmarks/verdict_stability.py --runs quiet burst burst
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from slmops.toolkit.domain.results.checklist import Thresholds
from slmops.toolkit.stages.checklist import timing
from slmops.toolkit.stages.checklist.statistics import decide


def _burn(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        end = time.time() + 2.5
        while time.time() < end:
            pass
        time.sleep(2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-int8", "smollm2-int4"])
    parser.add_argument("--reference", default="smollm2-fp32")
    parser.add_argument("--runs", nargs="+", choices=("quiet", "burst"), default=["quiet", "burst"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write every round here too")
    args = parser.parse_args()

    captured: dict[str, tuple[list, list]] = {}
    judged = timing.performance_check

    def spy(name, rounds, limits, reference, lengths):
        captured[name] = (list(rounds), list(reference[1]) if reference else [])
        return judged(name, rounds, limits, reference, lengths)

    timing.performance_check = spy
    limits = Thresholds(timing_rounds=(args.rounds, args.rounds))
    rows = []
    print(f"{'run':<6} {'model':<14} {'share':>22} {'margin':>7} {'difference (ms)':>24} {'margin':>7}")
    for run in args.runs:
        stop = multiprocessing.Event()
        burner = multiprocessing.Process(target=_burn, args=(stop,)) if run == "burst" else None
        if burner:
            burner.start()
        try:
            timing.performance_checks(args.models, args.reference, None, None, limits, 0, False)
        finally:
            stop.set()
            if burner:
                burner.join()
        for name in args.models:
            rounds, ref = captured[name]
            pairs = list(zip(rounds, ref, strict=False))
            share = decide([timing.share_of_allowance(s, l, limits, r) for (s, l), r in pairs], 1.0)
            diff = decide([(l - s) - timing._allowed_ms(s, limits, r) for (s, l), r in pairs], 0.0)
            margins = [abs(d.value - d.threshold) / d.spread if d.spread else float("inf") for d in (share, diff)]
            print(f"{run:<6} {name:<14} {share.value:>8.3f} ±{share.spread:<6.3f}{share.verdict:>7} "
                  f"{margins[0]:>7.2f} {diff.value:>9.2f} ±{diff.spread:<6.2f}{diff.verdict:>8} {margins[1]:>7.2f}")
            rows.append({"run": run, "model": name, "rounds": rounds, "reference_rounds": ref,
                         "share": [share.value, share.spread, str(share.verdict)],
                         "difference_ms": [diff.value, diff.spread, str(diff.verdict)]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
