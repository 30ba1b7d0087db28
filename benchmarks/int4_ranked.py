"""INT4 bodies whose 8-bit MatMuls are chosen by measured sensitivity, under a bits-per-weight budget (issue 25).

The named mixes (``slmops recipes``) pick 8-bit tensors by rule (llama.cpp's ``use_more_bits``).
This ranks every candidate instead: for each MatMul (a fused ``qkv_proj``'s value part counts
alone) it measures the output error 4 bits cause on the fine-tune's own calibration inputs,
``trace((W - Q)^T H (W - Q))`` with ``H = X^T X`` (:func:`slmops.toolkit.weights.gptq.output_error`),
divides it by the bits an 8-bit copy would add, and upgrades the worst first until the budget
is spent. Then it builds each variant with the project's quantizer and measures it with the same
metric code as ``slmops recipes`` (top-1 and KL against the fine-tuned FP32 on the bundled
reference text, KL to the base's FP32, decode tokens/s).

    .venv/bin/python benchmarks/int4_ranked.py --fp32 FT_FP32_DIR --base-fp32 BASE_FP32_DIR --out /tmp/int4-ranked \
        [--budgets 6.27 6.45] [--gptq README.md]

The FP32 builds are the demo's ``models/fp32`` and ``models/control-fp32``; pass a copy of the
fine-tune's (``cp -r``), since ONNX refuses to read a hard-linked data file and the demo links its builds.

Measured on the demo's fine-tune (``--budgets 6.27 6.45 --gptq README-as.txt``, then ``--asymmetric``):
ranking by output error puts the late layers' down and output projections first (their activations
are the largest), which is not where the logits lose most: at 6.27 bits per weight KL 0.214
(top-1 0.793), at 6.45 KL 0.174, against the rule-based ``mixed`` mix's 0.143 at 6.45; GPTQ on
generic text on top of it 0.243; asymmetric blocks 0.243 and 0.173. Llama.cpp's Q4_K_M: 0.061 at 6.27.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from int4_mix import build_variant  # this folder is on the path when a benchmark runs as a script

from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.runtimes import genai
from slmops.toolkit.weights import calibration, gptq, onnx_weights, quantize

#: Bits per weight of a symmetric block of 32 with a float32 scale: 4 + 32/32 and 8 + 32/32.
BITS4, BITS8 = 5.0, 9.0


def candidates(fp32: Path, extra: Path | None = None) -> list[dict]:
    """Each MatMul of the body (the value part of a fused qkv_proj alone) with its 4-bit output error per added bit.

    The inputs are the fine-tune's own set (the bundled Veloria set in the build's chat template) and, with
    ``extra``, that file's sequences too (a ``.txt`` of generic prose).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32 / "model.onnx"), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
               and n.name != onnx_weights.LM_HEAD]
    sequences = calibration.calibration_ids(fp32) + (calibration.calibration_ids(fp32, str(extra)) if extra else [])
    hessians, tokens = calibration.hessians(fp32 / "model.onnx", sequences, {n.input[0] for n in matmuls})
    config = json.loads((fp32 / "genai_config.json").read_text())["model"]["decoder"]
    value_columns = int(config["head_size"]) * int(config["num_key_value_heads"])
    rows = []
    for node in matmuls:
        init = inits[node.input[1]]
        onnx.external_data_helper.load_external_data_for_tensor(init, str(fp32))
        weight = numpy_helper.to_array(init).astype(np.float32)
        init.ClearField("raw_data")
        if "/qkv_proj/" in node.name:
            weight = weight[:, -value_columns:]
        codes, scales = gptq.rtn(weight, 4, 32)
        error = gptq.output_error(weight, gptq.dequantize(codes, scales, 32), hessians[node.input[0]]) / tokens
        rows.append({"name": node.name, "params": int(weight.size), "error": error,
                     "score": error / (weight.size * (BITS8 - BITS4))})
    return rows


def choose(rows: list[dict], extra_bits: float) -> set[str]:
    """The node names to upgrade, worst error per added bit first, while the added bits fit ``extra_bits``."""
    chosen, spent = set(), 0.0
    for row in sorted(rows, key=lambda r: -r["score"]):
        cost = row["params"] * (BITS8 - BITS4)
        if spent + cost <= extra_bits:
            chosen.add(row["name"])
            spent += cost
    return chosen


def build(fp32: Path, out: Path, plan: QuantPlan, chosen: set[str]) -> None:
    """:func:`int4_mix.build_variant`, with the mix rule replaced by ``chosen`` (names that get 8 bits)."""
    quantize.MIXES["ranked"] = {}
    original = quantize.mixed_bits
    quantize.mixed_bits = lambda name, plan_, layers: plan_.mix_bits if name in chosen else plan_.bits
    try:
        build_variant(fp32, out, replace(plan, mix="ranked") if chosen else plan)
    finally:
        quantize.mixed_bits = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--base-fp32", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/int4-ranked"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[6.27, 6.45],
                        help="bits per weight of the whole model (llama.cpp's Q4_K_M: 6.27)")
    parser.add_argument("--asymmetric", action="store_true", help="zero points for every block (ORT's asymmetric "
                        "grid) in every variant, the baseline included")
    parser.add_argument("--gptq", type=Path, help="also build the first budget's choice with GPTQ calibrated on this "
                        "file (a .txt of generic prose, or a fine-tuning JSONL)")
    args = parser.parse_args()
    fp32_bytes = sum(f.stat().st_size for f in args.fp32.glob("model.onnx*"))
    params = fp32_bytes // 4
    rows = candidates(args.fp32, args.gptq)
    print(f"{len(rows)} candidates; top ten by 4-bit output error per added bit:")
    for r in sorted(rows, key=lambda r: -r["score"])[:10]:
        print(f"  {r['name']:45s} {r['params']:>9,d} params  error {r['error']:.4g}")
    head = QuantPlan(lm_head_bits=8, embedding_bits=8, symmetric=not args.asymmetric)
    folders: dict[str, str] = {}
    build(args.fp32, args.out / "int8-head", head, set())
    folders["int8-head"] = str(args.out / "int8-head")
    head_bits = sum(f.stat().st_size for f in (args.out / "int8-head").glob("model.onnx*")) * 8
    for budget in args.budgets:
        chosen = choose(rows, budget * params - head_bits)
        name = f"ranked-{budget:.2f}"
        print(f"{name}: {len(chosen)} tensors at 8 bits, "
              f"{sum(r['params'] for r in rows if r['name'] in chosen) / 1e6:.1f}M parameters")
        (args.out / f"{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (args.out / f"{name}.json").write_text(json.dumps(sorted(chosen), indent=1))
        build(args.fp32, args.out / name, head, chosen)
        folders[name] = str(args.out / name)
        if args.gptq and budget == args.budgets[0] and not args.asymmetric:  # GPTQ here is symmetric
            gptq_plan = replace(head, algorithm="gptq", calibration=str(args.gptq))
            build(args.fp32, args.out / f"{name}-gptq", gptq_plan, chosen)
            folders[f"{name}-gptq"] = str(args.out / f"{name}-gptq")
    agreement = {a.model: a for a in genai.agreement(args.fp32, folders, base_dir=args.base_fp32)}
    speeds = genai.decode_speeds(folders)
    print("| build | bits/weight | size | top-1 vs FP32 | KL vs FP32 | KL vs base | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for name, folder in folders.items():
        size = sum(f.stat().st_size for f in Path(folder).glob("model.onnx*"))
        a = agreement[name]
        base = f"{a.kl_divergence_to_base:.4f}" if a.kl_divergence_to_base is not None else "-"
        print(f"| {name} | {size * 8 / params:.2f} | {size / 1e6:.1f} MB | {a.top1_agreement:.3f} | "
              f"{a.kl_divergence:.4f} | {base} | {speeds[name]:.0f} |")


if __name__ == "__main__":
    main()
