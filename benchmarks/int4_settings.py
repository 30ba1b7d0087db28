"""Benchmark: what registration controls, tried on our INT4's first token against native llama.cpp's Q4_0.

Issue 45's INT4 first-token gap: the registered builder INT4's prefill trails Q4_0's, and the
profile puts 85% of it in ``MatMulNBits`` (int8 compute, accuracy level 4, block 32). This stages
variants of one as-registered INT4 folder (files hard-linked, only ``genai_config.json`` or the
graphs rewritten; as registered, the prompt runs ``model_prompt.onnx`` in FP32 compute and the
tokens the served graph in int8 compute), each a setting registration could write or make:

- one graph in int8 compute for prompt and tokens (registration before the prompt graph);

- ONNX Runtime session config entries as keys of ``genai_config.json``'s ``session_options``
  (ONNX Runtime GenAI reads them there, not under a ``config_entries`` object): intra-op spinning off,
  ``session.dynamic_block_base`` (the thread pool's dynamic block scheduling),
  ``mlas.use_lut_gemm`` (MLAS's lookup-table low-bit GEMM);
- ``MatMulNBits``' ``accuracy_level`` attribute rewritten in every graph, prompt graph included
  (0: unset, 2: FP16 compute, which the CPU runs as FP32; the builder's default is 4, int8
  compute), the weights unchanged;

then runs ``llama_cpp.py --only Q4_0 --as-registered --also NAME=VARIANT:Q4_0 ...`` (alternating
rounds against Q4_0, first token and decode ratios) and reports each variant's KL divergence and
top-1 agreement against the FP32 build (teacher-forced on the bundled reference text, every
position's logits) beside it::

    .venv/bin/python benchmarks/int4_settings.py --models DIR --out /tmp/int4-settings
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH

#: name -> ("config", config entries), ("accuracy", level) or ("one graph", None: the build's model type).
VARIANTS: dict[str, tuple[str, object]] = {
    "one graph in int8 compute": ("one graph", None),
    "spinning off": ("config", {"session.intra_op.allow_spinning": "0"}),
    "dynamic block base 4": ("config", {"session.dynamic_block_base": "4"}),
    "LUT GEMM": ("config", {"mlas.use_lut_gemm": "1"}),
    "accuracy level 2": ("accuracy", 2),
    "accuracy level 0": ("accuracy", 0),
}
GRAPHS = ("model.onnx", "model_all_positions.onnx", PROMPT_GRAPH)


def set_accuracy(source: Path, target: Path, level: int) -> int:
    """``source`` graph with every ``MatMulNBits``' ``accuracy_level`` set to ``level``, written to ``target``; nodes changed."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    changed = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*attrs, onnx.helper.make_attribute("accuracy_level", level)])
            changed += 1
    onnx.save(model, str(target))
    return changed


def stage(source: Path, target: Path, kind: str, value: object) -> Path:
    """A variant of the as-registered folder ``source`` in ``target`` (hard links but for what it changes)."""
    if (target / "genai_config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    rewritten = {"genai_config.json", PROMPT_GRAPH} if kind == "one graph" else \
        {"genai_config.json"} if kind == "config" else set(GRAPHS)
    for item in source.iterdir():
        if item.is_file() and item.name not in rewritten:
            os.link(item, target / item.name)
    config = json.loads((source / "genai_config.json").read_text())
    if kind == "config":
        config["model"]["decoder"].setdefault("session_options", {}).update(value)
        (target / "genai_config.json").write_text(json.dumps(config, indent=4))
    elif kind == "one graph":  # registration before the prompt graph: the served graph for prompt and tokens
        config["model"]["decoder"].pop("pipeline", None)
        config["model"]["type"] = value
        (target / "genai_config.json").write_text(json.dumps(config, indent=4))
    else:
        for graph in GRAPHS:
            if (source / graph).is_file():
                set_accuracy(source / graph, target / graph, int(value))
    return target


def refusal(folder: Path) -> str:
    """Why ONNX Runtime GenAI refuses ``folder``'s ``genai_config.json`` ("" when it reads it); no model is loaded."""
    import onnxruntime_genai as og

    try:
        og.Config(str(folder))
    except Exception as error:  # noqa: BLE001 (its parser's one error type is RuntimeError; any refusal is reported)
        return str(error).splitlines()[0]
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="our builds as llama_cpp.py reads them (fp32, int4)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/int4-settings"), help="variants, GGUF files and results")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--no-kl", action="store_true", help="skip the KL divergence against FP32")
    args = parser.parse_args()
    for folder in ("fp32", "int4"):
        if not (args.models / folder / "genai_config.json").is_file():
            sys.exit(f"no build in {args.models / folder}: pass --models holding fp32 and int4 builds")

    from llama_cpp import Pair, registered_pairs

    args.out.mkdir(parents=True, exist_ok=True)
    (base,) = registered_pairs((Pair("ours INT4", "int4", "Q4_0"),), args.models, args.out)
    built_type = json.loads((args.models / "int4" / "genai_config.json").read_text())["model"]["type"]
    settings = {name: (kind, built_type if kind == "one graph" else value) for name, (kind, value) in VARIANTS.items()}
    staged = {name: stage(Path(base.folder), args.out / "variants" / name.replace(" ", "-"), *settings[name])
              for name in args.variants}
    for name, folder in list(staged.items()):
        if why := refusal(folder):
            print(f"{name}: not measured, ONNX Runtime GenAI refuses its genai_config.json: {why}", flush=True)
            del staged[name]
    if not args.no_kl:
        from slmops.toolkit.runtimes import genai

        folders = {"as registered": base.folder, **{n: str(p) for n, p in staged.items()}}
        for row in genai.agreement(args.models / "fp32", folders):
            print(f"quality: {row.model}: KL {row.kl_divergence:.4f}, top-1 {row.top1_agreement:.3f} against FP32",
                  flush=True)
    command = [sys.executable, str(Path(__file__).with_name("llama_cpp.py")), "--models", str(args.models), "--out",
               str(args.out), "--only", "Q4_0", "--as-registered", "--no-quality", "--rounds", str(args.rounds),
               "--reps", str(args.reps)]
    for name, folder in staged.items():
        command += ["--also", f"ours INT4, as registered, {name}={folder}:Q4_0"]
    print(" ".join(command), flush=True)
    sys.exit(subprocess.run(command, check=False).returncode)


if __name__ == "__main__":
    main()
