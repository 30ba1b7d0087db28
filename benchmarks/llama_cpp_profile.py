"""Where our prefill's time goes: ONNX Runtime's profiler, per operator and per MatMul group, for builds side by side.

The question of issue 45's third part: our INT4 first token trails native llama.cpp's Q4_0 prefill;
which operators cost it? Each build is loaded through ONNX Runtime GenAI with ONNX Runtime's
profiler on (``session_options.enable_profiling`` in an overlay of ``genai_config.json``; the
files are not touched), a prompt of ``--prompt-tokens`` tokens is prefilled ``--runs`` times
after one untimed prefill, and the profile's node events are summed per operator type, with
the ``MatMulNBits`` nodes split into the LM head and the body, and their ``accuracy_level``
and ``block_size`` read from the graph. Ratios are shares of each build's own prefill time.

    .venv/bin/python benchmarks/llama_cpp_profile.py int4=DIR int4-b64=DIR --threads 2

Each build also reports its median prefill wall time (first token, as ``genai.time_generation`` counts
it) without the profiler, alternating builds, so the shares can be read against it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from slmops.toolkit.runtimes.genai_folders import load
from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def node_attributes(model_file: Path) -> dict[str, dict]:
    """``{node name: {"op", "accuracy_level", "block_size", "bits", "K", "N"}}`` of a model's MatMulNBits nodes (no weights read)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            out[node.name] = {"op": node.op_type, **{k: attrs.get(k) for k in ("accuracy_level", "block_size", "bits",
                                                                             "K", "N")}}
    return out


def summarize_profile(events: list[dict], lm_head_nodes: set[str]) -> dict:
    """Per-operator time (ms per prefill) of the ``model_run`` events after the first (the warm-up).

    ``MatMulNBits`` nodes in ``lm_head_nodes`` are counted as ``MatMulNBits (LM head)``.
    """
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[1:]
    if not runs:
        raise ValueError("the profile holds fewer than two model runs")
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(run["ts"] <= event["ts"] <= run["ts"] + run["dur"] for run in runs):
            continue
        op = event.get("args", {}).get("op_name", "?")
        node = event["name"].removesuffix("_kernel_time")
        if op == "MatMulNBits":
            op = "MatMulNBits (LM head)" if node in lm_head_nodes else "MatMulNBits (body)"
        totals[op] += event["dur"] / 1000
    return {"runs": len(runs), "run_ms": statistics.median(r["dur"] / 1000 for r in runs),
            "ops_ms": {op: ms / len(runs) for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])}}


def profile(folder: Path, ids: list[int], threads: int, runs: int, work: Path) -> list[dict]:
    """Prefill ``ids`` ``runs + 1`` times with ONNX Runtime's profiler on; the profile's events."""
    import onnxruntime_genai as og

    prefix = work / f"{folder.name}-prof"
    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "enable_profiling": str(prefix)}}}}))
    model = og.Model(config)
    for _ in range(runs + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 2, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        del generator
    del model
    found = [json.loads(path.read_text()) for path in work.glob(f"{prefix.name}*.json")]
    if not found:
        raise FileNotFoundError(f"ONNX Runtime wrote no profile for {folder} (looked for {prefix}*.json)")
    # A registered pipeline writes one profile per stage's session; the prompt stage's holds the prefills.
    return max(found, key=lambda events: sum(e.get("name") == "model_run" for e in events))


def prefill_ms(models: dict, ids: list[int], runs: int) -> dict[str, float]:
    """Median prefill time (ms) of each loaded model, the builds alternating, order reversed every round."""
    import onnxruntime_genai as og

    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for round_ in range(runs + 1):
        for name in names if round_ % 2 == 0 else names[::-1]:
            params = og.GeneratorParams(models[name])
            params.set_search_options(max_length=len(ids) + 2, do_sample=False)
            generator = og.Generator(models[name], params)
            start = time.perf_counter()
            generator.append_tokens(ids)
            generator.generate_next_token()
            if round_:
                times[name].append((time.perf_counter() - start) * 1000)
            del generator
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("builds", nargs="+", help="NAME=MODEL_DIR (an ONNX Runtime GenAI model folder)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    builds = {}
    for item in args.builds:
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "genai_config.json").is_file():
            sys.exit(f"{item}: pass NAME=MODEL_DIR, a folder with genai_config.json")
        builds[name] = Path(folder)

    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    from slmops.toolkit.domain.prompts import prompt_text

    first = next(iter(builds.values()))
    tokenizer = Tokenizer.from_file(str(first / "tokenizer.json"))
    ids = tokenizer.encode(prompt_text(tokenizer, args.prompt_tokens), add_special_tokens=False).ids
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in builds.items():
            prompt = folder / PROMPT_GRAPH  # a registered pipeline prefills through its prompt graph
            attrs = node_attributes(prompt if prompt.is_file() else folder / "model.onnx")
            head = {n for n in attrs if "lm_head" in n}
            summary = summarize_profile(profile(folder, ids, args.threads, args.runs, Path(tmp)), head)
            kinds = sorted({(a["bits"], a["block_size"], a["accuracy_level"]) for a in attrs.values()})
            summary["matmulnbits"] = [{"bits": b, "block_size": s, "accuracy_level": a} for b, s, a in kinds]
            result[name] = summary
    models = {name: load(folder, args.threads) for name, folder in builds.items()}
    walls = prefill_ms(models, ids, args.runs)
    del models, og
    print(f"Prefill of {len(ids)} tokens, {args.threads} threads, {args.runs} profiled runs after one untimed; "
          "ms per prefill (share of the profiled run)")
    for name, summary in result.items():
        summary["wall_ms"] = walls[name]
        kinds = ", ".join(f"{k['bits']}-bit block {k['block_size']} accuracy {k['accuracy_level']}"
                          for k in summary["matmulnbits"])
        print(f"\n{name}: first token {walls[name]:.1f} ms unprofiled; profiled run {summary['run_ms']:.1f} ms; "
              f"MatMulNBits: {kinds or 'none'}")
        for op, ms in summary["ops_ms"].items():
            if ms >= 0.05:
                print(f"  {op:28s} {ms:8.2f} ms  {ms / summary['run_ms']:6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "builds": {k: str(v) for k, v in builds.items()},
                                         "prompt_tokens": len(ids), "threads": args.threads, "result": result},
                                        indent=1))


if __name__ == "__main__":
    main()
