"""The demo's fine-tune on one base recipe built two ways: LoRA merged into the INT4 weights, or kept apart (issue 44).

Kept apart is ``slmops convert ADAPTER --adapter-in-graph``: one graph (as Foundry Local loads) whose base
weights are the recipe's INT4 and whose LoRA stays an FP16 side branch ``y = W4 x + B(A x)``; merged is
``slmops convert ADAPTER`` (the LoRA added to the FP32 weights, then quantized). Both are read against the
merged FP32 build, teacher-forced on the bundled reference text (:func:`slmops.toolkit.runtimes.genai.agreement`,
as ``slmops recipes`` does): top-1 agreement, KL divergence, and the KL divergence to the base model's FP32
(how far the build stays from the base: a fine-tune rounded away falls back toward it). Bits per weight are the
graph's files (the LoRA's bytes included) x 8 / the base's parameters. Domain: the Veloria fine-tune's trained
and held-out questions, answered greedily and judged by the checklist's rules (``benchmarks/int4_domain.py``).
Decode: ONNX Runtime GenAI, each build loaded once and warmed up, then ``--rounds`` rounds of one greedy run of 64
tokens of each build, in alternating order; the ratio (kept apart / merged) is taken per round and reported as its
median and range.

Targets (issue 44), per recipe: the kept-apart build's KL below the merged build's; its KL to the base at
least the merged FP32's minus 10%; every domain and held-out case FP32 passes, passed; decode at least 0.85x
the merged build's. Beside it, llama.cpp's Q4_K_M of the same merged FP32 (the GGUF ``benchmarks/llama_cpp.py``
made), read on the same ids through llama-cpp-python when its venv is there (``benchmarks/llama_cpp.py
--setup-quality``); otherwise its weights de-quantized to FP32 by transformers' GGUF loader, converted to FP32
and read through the same code (llama.cpp's own runtime also rounds the activations to 8 bits in its matrix
products, which this leaves out). The goal is its KL at or under its bits per weight.

    .venv/bin/python benchmarks/lora_in_graph.py --out /tmp/lora-in-graph \\
        --recipe mixed --recipe builder-default

Everything goes to ``OUT/lora_in_graph.json``; the FP32 builds and the recipe builds are kept in ``OUT`` and reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from int4_domain import answers
from llama_cpp import LlamaWorker, agreement_figures, venv_python
from llama_cpp_native import tools_root

from slmops.toolkit.core.artifacts import MANIFEST
from slmops.toolkit.domain import datasets
from slmops.toolkit.domain.options import (
    BRANCH_BITS,
    INT4_RECIPES,
    LORA_BRANCH_BITS,
    LORA_BRANCH_LAYOUT,
    LORA_ERROR_RANK,
    BranchLayout,
    Precision,
)
from slmops.toolkit.stages.checklist.cases import judge

KL_TO_BASE_SHARE = 0.9  # the kept-apart build's KL to the base, at least this share of the merged FP32's
DECODE_TARGET = 0.85  # kept apart / merged decode tokens/s, at least
DECODE_TOKENS = 64  # tokens a decode round times, per build


def bits_per_weight(folder: Path, parameters: int) -> float:
    """A build's graph and weights (``model.onnx*``: the LoRA's bytes too, when in the graph) x 8 / parameters."""
    return 8 * sum(f.stat().st_size for f in folder.glob("model.onnx*")) / parameters


def build(adapter: Path, out: Path, precision: Precision, *, recipe: str = "", in_graph: bool = False,
          base: Path | None = None, fp32: Path | None = None, error_rank: int = LORA_ERROR_RANK,
          branch_bits: int = LORA_BRANCH_BITS, layout: BranchLayout = LORA_BRANCH_LAYOUT) -> Path:
    """One build through ``slmops convert``'s code (kept when its manifest is there)."""
    from slmops.toolkit.stages.convert import ConvertSpec, convert

    if (out / MANIFEST).is_file():
        return out
    model = base if base is not None else adapter
    options = INT4_RECIPES[recipe] if recipe else INT4_RECIPES["builder-default"]
    spec = ConvertSpec(model, out, precision, int4=options, adapter_in_graph=in_graph,
                       quantize_from=fp32 if not in_graph else None, error_rank=error_rank, branch_bits=branch_bits,
                       branch_layout=layout)
    print(f"building {out.name}", flush=True)
    return convert(spec, progress=False).output_dir


def verdict(ok: bool) -> str:
    return "pass" if ok else "fail"


def domain(builds: dict[str, Path]) -> dict[str, dict]:
    """Each build's trained and held-out Veloria cases passed, and the cases FP32 (the first build) passes that it fails."""
    split = datasets.cases(datasets.load_dataset())
    cases = [c for c in split["trained"] + split[datasets.HELDOUT] if "expect" in c]
    passed = {label: [judge(a, c["expect"])[0] for a, c in zip(answers(folder, cases), cases, strict=True)]
              for label, folder in builds.items()}
    reference = next(iter(passed.values()))
    return {label: {"passed": sum(row), "cases": len(row),
                    "lost": [c["id"] for c, ok, ref in zip(cases, row, reference, strict=True) if ref and not ok]}
            for label, row in passed.items()}


def decode_ratios(pairs: dict[str, tuple[Path, Path]], rounds: int, tokens: int = DECODE_TOKENS) -> dict[str, dict]:
    """Per kept-apart build, decode tokens/s of it and its merged build per round, and the ratio (kept / merged).

    Each build is loaded once (ONNX Runtime GenAI, the runtime's default threads) and warmed up by one run; a round
    times one greedy run of ``tokens`` tokens of each, in alternating order (:func:`~slmops.toolkit.runtimes.genai.
    time_generation`, tokens after the first).
    """
    import onnxruntime_genai as og

    from slmops.toolkit.domain.prompts import reference_text
    from slmops.toolkit.runtimes import genai
    from slmops.toolkit.runtimes.genai_folders import load

    folders = {folder for pair in pairs.values() for folder in pair}
    models = {folder: load(folder) for folder in folders}
    ids = list(og.Tokenizer(next(iter(models.values()))).encode(reference_text()[:200]))

    def speed(folder: Path, warmup: int = 0) -> float:
        return genai.time_generation(models[folder], ids, tokens, 1, warmup)[0].decode_tps

    for folder in folders:
        speed(folder, warmup=1)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pairs}
    for round_ in range(rounds):
        for name, (merged, kept) in pairs.items():
            order = (merged, kept) if round_ % 2 == 0 else (kept, merged)  # who goes first alternates
            timed = {folder: speed(folder) for folder in order}
            runs[name].append((timed[merged], timed[kept]))
    out = {}
    for name, figures in runs.items():
        ratios = [kept / merged for merged, kept in figures]
        out[name] = {"merged_tps": statistics.median(m for m, _ in figures),
                     "kept_tps": statistics.median(k for _, k in figures),
                     "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)], "tokens": tokens}
    return out


def profile_token(folder: Path, past: int = 128, runs: int = 50) -> dict[str, dict]:
    """ONNX Runtime's profiler over one decoded token (``past`` cached positions) of a build's graph, per operator.

    The graph runs directly in an ``onnxruntime`` session (2 intra-op threads, the machine's cores) on one new token
    with random cached keys and values, ``runs`` times. Figures per token: each operator's kernel time (ms, the
    profiler's own cost per node included) and its node count.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = 2, True
    options.profile_file_prefix = str(folder.parent / f"{folder.name}-profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        if value.name == "input_ids":
            feeds[value.name] = np.array([[42]], np.int64)
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones((1, past + 1), np.int64)
        elif value.name == "position_ids":
            feeds[value.name] = np.array([[past]], np.int64)
        elif value.name.startswith("past_key_values"):
            feeds[value.name] = np.random.default_rng(0).random((1, value.shape[1], past, value.shape[3]), np.float32)
    for _ in range(runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    ops: dict[str, dict] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = ops.setdefault(event["args"]["op_name"], {"ms": 0.0, "nodes": 0})
            op["ms"] += event["dur"] / 1000 / runs
            op["nodes"] += 1
    return {name: {"ms": round(op["ms"], 3), "nodes": op["nodes"] // runs}
            for name, op in sorted(ops.items(), key=lambda item: -item[1]["ms"])}


def llama_cpp_row(gguf: Path, fp32: Path, base_fp32: Path, venv: Path, out: Path, threads: int) -> dict | None:
    """Q4_K_M's top-1 and KL against the merged FP32 (and its KL to the base) on the same ids, or None without its venv."""
    from slmops.toolkit.domain.prompts import reference_text
    from slmops.toolkit.runtimes import genai

    if not venv_python(venv).exists():
        print(f"llama.cpp: not measured (no llama-cpp-python venv at {venv}: run benchmarks/llama_cpp.py "
              "--setup-quality)", flush=True)
        return None
    text = reference_text()
    ids, reference = genai.logits(fp32, text)
    base_ids, base = genai.logits(base_fp32, text)
    assert np.array_equal(ids, base_ids), "the FP32 builds tokenize the reference text differently"
    worker = LlamaWorker(venv_python(venv), out / "llama_cpp_worker.log")
    npy = out / f"{gguf.stem}.logits.npy"
    try:
        worker("logits", model=str(gguf), ids=[int(i) for i in ids], out=str(npy), threads=threads)
    finally:
        worker.close()
    theirs = np.load(npy)
    npy.unlink()
    figures = agreement_figures(ids, reference, theirs)
    return {"top1_agreement": figures["top1_agreement"], "kl_divergence": figures["kl_divergence"],
            "kl_divergence_to_base": agreement_figures(ids, base, theirs)["kl_divergence"]}


def gguf_weights_as_hf(gguf: Path, merged: Path, out: Path) -> Path:
    """A GGUF's weights de-quantized to FP32 (transformers' GGUF loader) as a Hugging Face folder (kept and reused).

    The tokenizer, chat template and generation config are the merged fine-tune's, so its build reads the same ids.
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "model.safetensors").is_file():
        return out
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if hasattr(config, "quantization_config"):  # the de-quantized weights are plain FP32
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    config.architectures = json.loads((merged / "config.json").read_text())["architectures"]
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (merged / name).is_file():
            shutil.copy2(merged / name, staging / name)
    staging.rename(out)
    return out


def table(rows: list[dict]) -> list[str]:
    def cell(value, spec: str) -> str:
        return "" if value is None else format(value, spec)

    lines = [("| build | bits/weight | top-1 vs merged FP32 | KL vs merged FP32 | KL to base | domain + held-out "
             "(FP32 passes, build fails) | decode vs merged |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lost = r.get("domain")
        cases = f"{lost['passed']}/{lost['cases']} ({', '.join(lost['lost']) or 'none'})" if lost else ""
        decode = r.get("decode")
        speed = (f"{decode['ratio']:.2f}x ({decode['ratio_range'][0]:.2f}-{decode['ratio_range'][1]:.2f})"
                 if decode else "")
        lines.append(f"| {r['build']} | {cell(r['bpw'], '.2f')} | {cell(r.get('top1_agreement'), '.3f')} | "
                     f"{cell(r.get('kl_divergence'), '.4f')} | {cell(r.get('kl_divergence_to_base'), '.3f')} | "
                     f"{cases} | {speed} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--adapter", type=Path, help="the LoRA adapter (default: the demo's Veloria fine-tune)")
    parser.add_argument("--recipe", action="append", choices=list(INT4_RECIPES),
                        help="base recipe, built merged and kept apart (repeatable; default: mixed)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/lora-in-graph"), help="builds and lora_in_graph.json")
    parser.add_argument("--gguf", type=Path, help="llama.cpp's Q4_K_M of the merged fine-tune (default: the one "
                        "benchmarks/llama_cpp.py made for the demo)")
    parser.add_argument("--llama-venv", type=Path, default=Path.home() / ".slmops" / "llama-cpp-venv")
    parser.add_argument("--error-rank", type=int, action="append",
                        help=f"the kept-apart build's rank for the base's rounding error (repeatable; default: "
                        f"{LORA_ERROR_RANK}, slmops convert's)")
    parser.add_argument("--branch-bits", type=int, action="append", choices=BRANCH_BITS,
                        help=f"the kept-apart build's side branch storage (repeatable; default: {LORA_BRANCH_BITS})")
    parser.add_argument("--branch-layout", action="append", choices=[x.value for x in BranchLayout],
                        help=f"how the kept-apart build's branch joins its base (repeatable; default: "
                        f"{LORA_BRANCH_LAYOUT})")
    parser.add_argument("--rounds", type=int, default=9, help="decode rounds (one timed run of each build a round)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads for its logits")
    parser.add_argument("--no-domain", action="store_true", help="skip the domain and held-out cases")
    parser.add_argument("--markdown", type=Path, help="append the table to this file")
    parser.add_argument("--profile", action="store_true",
                        help="also ONNX Runtime's profile of one decoded token of each INT4 build, per operator")
    args = parser.parse_args()
    from slmops.toolkit.runtimes import genai
    from slmops.toolkit.weights.adapter_inspect import inspect_adapter
    from slmops.toolkit.weights.bundled import bundled_model

    if args.adapter is None:
        from slmops.toolkit.stages.finetune import bundled_adapter

        args.adapter = bundled_adapter(bundled_model(), progress=False).adapter
    adapter = inspect_adapter(args.adapter)
    recipes = args.recipe or ["mixed"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    fp32 = build(args.adapter, out / "fp32", Precision.FP32)
    base_fp32 = build(args.adapter, out / "base-fp32", Precision.FP32, base=adapter.base)
    made = json.loads((fp32 / MANIFEST).read_text())
    parameters, merged_source = made["parameters"], Path(made["source_path"])  # the merge, named by its content
    builds = {"merged FP32": fp32}
    kept_of: dict[str, str] = {}  # kept-apart label -> recipe
    for recipe in recipes:
        builds[f"{recipe}, merged"] = build(args.adapter, out / recipe, Precision.INT4, recipe=recipe, fp32=fp32)
        for rank in args.error_rank or [LORA_ERROR_RANK]:
            for bits in args.branch_bits or [LORA_BRANCH_BITS]:
                for layout in map(BranchLayout, args.branch_layout or [LORA_BRANCH_LAYOUT]):
                    label = f"{recipe}, LoRA in graph (r'={rank}, {bits}-bit branch, {layout})"
                    folder = out / f"{recipe}-lora-r{rank}-b{bits}-{layout}"
                    builds[label] = build(args.adapter, folder, Precision.INT4, recipe=recipe, in_graph=True,
                                          error_rank=rank, branch_bits=bits, layout=layout)
                    kept_of[label] = recipe
    rows = [{"build": label, "folder": str(folder), "bpw": bits_per_weight(folder, parameters)}
            for label, folder in builds.items()]
    gguf = args.gguf or tools_root() / f"{merged_source.name}-q4_k_m.gguf"
    theirs = llama_cpp_row(gguf, fp32, base_fp32, args.llama_venv, out, args.threads) if gguf.is_file() else None
    if gguf.is_file():
        row = {"build": "llama.cpp Q4_K_M", "file": str(gguf), "bpw": 8 * gguf.stat().st_size / parameters}
        if theirs is None:  # its weights through our FP32 graph: the same code on the same ids
            print("llama.cpp Q4_K_M: its weights de-quantized to FP32, read through ONNX Runtime GenAI", flush=True)
            label = "llama.cpp Q4_K_M (its weights de-quantized, FP32 math)"
            builds[label] = build(gguf_weights_as_hf(gguf, merged_source, out / "q4_k_m-hf"),
                                  out / "q4_k_m-weights-fp32", Precision.FP32)
            row["build"], row["folder"] = label, str(builds[label])
        rows.append({**row, **(theirs or {})})
    by_label = {r["build"]: r for r in rows}
    print("agreement", flush=True)
    for a in genai.agreement(fp32, builds, base_dir=base_fp32):
        by_label[a.model].update(top1_agreement=a.top1_agreement, kl_divergence=a.kl_divergence,
                                 kl_divergence_to_base=a.kl_divergence_to_base)
    if not args.no_domain:
        print("domain cases", flush=True)
        for label, figures in domain(builds).items():
            by_label[label]["domain"] = figures
    print("decode", flush=True)
    speeds = decode_ratios({label: (builds[f"{recipe}, merged"], builds[label]) for label, recipe in kept_of.items()},
                           args.rounds)
    for label, figures in speeds.items():
        by_label[label]["decode"] = figures
    if args.profile:
        print("profile of one decoded token (ms per token, nodes)", flush=True)
        for label, folder in builds.items():
            if label in kept_of or label.endswith(", merged"):
                by_label[label]["profile"] = profile_token(folder)
                total = sum(op["ms"] for op in by_label[label]["profile"].values())
                print(f"  {label}: {total:.2f} ms, " + ", ".join(
                    f"{name} {op['ms']:.2f} ({op['nodes']})" for name, op in by_label[label]["profile"].items()
                    if op["ms"] >= 0.1), flush=True)
    q4_k_m = rows[-1] if gguf.is_file() else None
    fp32_to_base = by_label["merged FP32"]["kl_divergence_to_base"]
    targets = []
    for label, recipe in kept_of.items():
        merged, kept = by_label[f"{recipe}, merged"], by_label[label]
        targets.append({
            "build": label,
            "kl_below_merged": verdict(kept["kl_divergence"] < merged["kl_divergence"]),
            "kl_to_base_kept": verdict(kept["kl_divergence_to_base"] >= KL_TO_BASE_SHARE * fp32_to_base),
            "domain_kept": verdict(not kept["domain"]["lost"]) if "domain" in kept else "not measured",
            "decode": verdict(kept["decode"]["ratio"] >= DECODE_TARGET),
            "q4_k_m_goal": (verdict(kept["kl_divergence"] <= q4_k_m["kl_divergence"] and kept["bpw"] <= q4_k_m["bpw"])
                            if q4_k_m and "kl_divergence" in q4_k_m else "not measured"),
        })
    lines = table(rows)
    lines += ["", ("| build | KL below merged's | KL to base >= 0.9x merged FP32's | domain + held-out as FP32 | "
              "decode >= 0.85x merged | goal: Q4_K_M's KL at its bits |"), "|---|---|---|---|---|---|"]
    lines += [f"| {t['build']} | {t['kl_below_merged']} | {t['kl_to_base_kept']} | {t['domain_kept']} | "
              f"{t['decode']} | {t['q4_k_m_goal']} |" for t in targets]
    print("\n".join(lines))
    (out / "lora_in_graph.json").write_text(json.dumps({"rows": rows, "targets": targets, "adapter": str(args.adapter),
                                                        "parameters": parameters}, indent=2))
    if args.markdown:
        with args.markdown.open("a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
