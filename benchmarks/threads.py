"""Benchmark: ``slmops register --threads auto`` against the runtime's default thread count, through Foundry Local.

Registers one converted model twice, once with ``--threads auto`` (the default: a short probe
picks the fastest count) and once with ``--threads default`` (ONNX Runtime's own choice),
then benchmarks both through Foundry Local in-process (128-token prompt, 128 generated, the
tutorial's tuning case) in alternating rounds, since the machines here are shared and noisy,
and prints each round and the median ratio of decode speed and time to first token. Usage::

    .venv/bin/python benchmarks/threads.py                      # the demo's INT4 build (run `make demo` first)
    .venv/bin/python benchmarks/threads.py --model-dir outputs/demo/models/fp32 --rounds 5
    .venv/bin/python benchmarks/threads.py --markdown /tmp/threads.md   # also a section for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report_md import append, section

from slmops.toolkit.stages import bench, register
from slmops.toolkit.stages.register_catalog import unregister


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="outputs/demo/models/int4", help="a folder `slmops convert` wrote")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", metavar="FILE", help="append the rounds as a dated section of the benchmarks page")
    args = parser.parse_args()

    auto = register.register(args.model_dir, "threads-bench-auto", model_config=register.ModelConfig(threads="auto"), force=True)
    register.register(args.model_dir, "threads-bench-default", model_config=register.ModelConfig(threads=None), force=True)
    print(f"--threads auto chose {auto.threads.chosen}; probe: {list(auto.threads.probe)}")
    decode, ttft, table_rows = [], [], []
    try:
        for number in range(1, args.rounds + 1):
            order = ["threads-bench-default", "threads-bench-auto"][:: 1 if number % 2 else -1]
            rows = {r.model: r for r in bench.bench(order, engines=("foundry-local",), prompt_lengths=[128],
                                                    gen_lengths=[128], repeats=args.repeats, warmup=1,
                                                    progress=False)}
            fast, base = rows["threads-bench-auto"], rows["threads-bench-default"]
            decode.append(fast.decode_tps / base.decode_tps)
            ttft.append(fast.ttft_ms / base.ttft_ms)
            table_rows.append([number, f"{base.decode_tps:.1f}", f"{base.ttft_ms:.0f}", f"{fast.decode_tps:.1f}",
                         f"{fast.ttft_ms:.0f}"])
            print(f"round {number}: default {base.decode_tps:.1f} tok/s, first token {base.ttft_ms:.0f} ms; "
                  f"auto ({auto.threads.chosen} threads) {fast.decode_tps:.1f} tok/s, {fast.ttft_ms:.0f} ms")
    finally:
        unregister("threads-bench-auto")
        unregister("threads-bench-default")
    print(f"--threads auto against the runtime's default: decode {statistics.median(decode):.2f}x, "
          f"time to first token {statistics.median(ttft):.2f}x (medians of {args.rounds} rounds)")
    append(args.markdown, section(
        "Threads", ["round", "default: decode tok/s", "default: TTFT ms", f"auto ({auto.threads.chosen}): decode tok/s",
                    f"auto ({auto.threads.chosen}): TTFT ms"], table_rows,
        note=f"`--threads auto` against the runtime's default: decode {statistics.median(decode):.2f}x, time to "
             f"first token {statistics.median(ttft):.2f}x (medians of {args.rounds} rounds, 128/128 tokens, "
             "Foundry Local in-process)."))


if __name__ == "__main__":
    main()
