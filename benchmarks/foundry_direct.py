"""Benchmark: Foundry Local's own first token and decode against the direct engine, with the registered settings.

Issue 45's last target: whatever registration chooses must also hold in Foundry Local. One
converted model is registered as ``slmops register`` does by default (``--threads auto``, the
LM head on the last position, its ``genai_config.json`` as registration writes it); then in
``--rounds`` rounds ``slmops bench``'s two in-process engines time the same registered folder
on the same token ids: Foundry Local (``foundry-local-sdk``) and ONNX Runtime GenAI directly
(``ort-genai``, the engine Foundry Local wraps, with the same intra-op threads). The ratios
Foundry Local / direct are taken per round and reported as medians with their range: first
token (time to first token, each engine's median of ``--repeats``) and decode tokens/s. Target
for both: 0.9-1.1x (pass when every round is inside, fail when none is, warn otherwise).

    .venv/bin/python benchmarks/foundry_direct.py --model-dir outputs/demo/models/int4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report_md import append, section

from slmops.toolkit.stages import bench, register
from slmops.toolkit.stages.register_catalog import unregister

LOW, HIGH = 0.9, 1.1  # Foundry Local / direct, first token and decode


def verdict(ratios: list[float]) -> str:
    """``pass`` when every round's ratio is within 0.9-1.1x, ``fail`` when none is, ``warn`` otherwise.

    Example:
        >>> verdict([0.95, 1.02]), verdict([1.2, 1.05]), verdict([1.3])
        ('pass', 'warn', 'fail')
    """
    inside = [LOW <= r <= HIGH for r in ratios]
    return "pass" if all(inside) else "fail" if not any(inside) else "warn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("outputs/demo/models/int4"),
                        help="a folder `slmops convert` wrote (default: the demo's INT4)")
    parser.add_argument("--name", default="foundry-direct-bench", help="the name it is registered under (removed after)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", metavar="FILE", help="append the rounds as a dated section of the benchmarks page")
    args = parser.parse_args()
    if not (args.model_dir / "genai_config.json").is_file():
        sys.exit(f"no build in {args.model_dir}: convert one (slmops convert MODEL --precision int4 -o DIR) "
                 "and pass --model-dir DIR")
    if min(args.rounds, args.repeats, args.prompt_tokens) < 1 or args.gen_tokens < 2:
        sys.exit("--rounds, --repeats and --prompt-tokens must be at least 1 and --gen-tokens at least 2")

    registered = register.register(args.model_dir, args.name, force=True)
    config = json.loads((Path(registered.path) / "genai_config.json").read_text())
    options = config["model"]["decoder"].get("session_options", {})
    stages = [f"{name}: {stage['filename']}" for step in config["model"]["decoder"].get("pipeline", [])
              for name, stage in step.items()]
    graphs = f"pipeline ({', '.join(stages)})" if stages else f"one graph ({config['model']['decoder']['filename']})"
    print(f"registered {args.name}: threads {registered.threads.chosen}; session options {options}; {graphs}",
          flush=True)
    first, decode, rows = [], [], []
    try:
        for number in range(1, args.rounds + 1):
            got = {r.engine: r for r in bench.bench([args.name], engines=("foundry-local", "ort-genai"),
                                                    prompt_lengths=[args.prompt_tokens], gen_lengths=[args.gen_tokens],
                                                    repeats=args.repeats, warmup=1, progress=False)}
            foundry, direct = got["foundry-local"], got["ort-genai"]
            first.append(foundry.ttft_ms / direct.ttft_ms)
            decode.append(foundry.decode_tps / direct.decode_tps)
            rows.append([number, f"{foundry.ttft_ms:.0f} / {direct.ttft_ms:.0f}", f"{first[-1]:.2f}",
                         f"{foundry.decode_tps:.1f} / {direct.decode_tps:.1f}", f"{decode[-1]:.2f}"])
            print(f"round {number}: first token {foundry.ttft_ms:.0f} / {direct.ttft_ms:.0f} ms ({first[-1]:.2f}x), "
                  f"decode {foundry.decode_tps:.1f} / {direct.decode_tps:.1f} tok/s ({decode[-1]:.2f}x)", flush=True)
    finally:
        unregister(args.name)
    summary = (f"Foundry Local / direct: first token {statistics.median(first):.2f}x ({min(first):.2f}-{max(first):.2f}) "
               f"-> {verdict(first).upper()}; decode {statistics.median(decode):.2f}x ({min(decode):.2f}-"
               f"{max(decode):.2f}) -> {verdict(decode).upper()} (target {LOW}-{HIGH}x; medians of {args.rounds} "
               f"rounds, {args.prompt_tokens} prompt / {args.gen_tokens} generated tokens)")
    print(summary)
    append(args.markdown, section(
        "Foundry Local against the direct engine, as registered",
        ["round", "first token ms, Foundry Local / direct", "first token x", "decode tok/s, Foundry Local / direct",
         "decode x"], rows, note=f"{summary}. Registered with threads {registered.threads.chosen}, session options "
                                  f"`{json.dumps(options)}`, {graphs}."))


if __name__ == "__main__":
    main()
