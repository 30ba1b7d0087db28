"""INT4 recipes against the fine-tuned FP32 and the base, on the demo's fine-tune (issue 25).

Builds each variant from the FP32 ONNX build with the project's quantizer
(:func:`slmops.toolkit.weights.quantize.quantize`), then measures with the same metric code as
``slmops recipes`` (:func:`slmops.toolkit.runtimes.genai.agreement`, the bundled reference text):
bits per weight (model files x 8 / parameters), size, top-1 and KL against the fine-tuned
FP32, KL against the base's FP32, and a quick decode probe.

    .venv/bin/python benchmarks/int4_mix.py --fp32 FT_FP32_DIR --base-fp32 BASE_FP32_DIR --out /tmp/int4-mix

The FP32 builds: ``slmops convert MERGED_FT --precision fp32 --out FT_FP32_DIR`` and the same for
the base (``slmops bundled``). The merged fine-tune is
``slmops.toolkit.weights.adapter_merge.merge(inspect_adapter(bundled_adapter(bundled_model()).adapter))``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.runtimes import genai
from slmops.toolkit.weights.quantize import quantize

VARIANTS = {
    "builder-default": QuantPlan(lm_head_bits=4, embedding_bits=32, lm_head_with_body=True),
    "int8-head": QuantPlan(lm_head_bits=8, embedding_bits=8),
    "q4_k_m mix": QuantPlan(lm_head_bits=8, embedding_bits=8, mix="q4_k_m"),
    "mixed (v-all-down-more-bits)": QuantPlan(lm_head_bits=8, embedding_bits=8, mix="v-all-down-more-bits"),
    "int8": QuantPlan(bits=8, lm_head_bits=8, embedding_bits=8),
}



def build_variant(fp32: Path, out: Path, plan: QuantPlan) -> float | None:
    """Quantize the FP32 build ``fp32`` with ``plan`` into ``out`` beside copies of its other files.

    Returns:
        The quantizer's wall time in seconds, or None when ``out`` already holds a build (kept).
    """
    if (out / "model.onnx").exists():
        return None
    out.mkdir(parents=True, exist_ok=True)
    for f in fp32.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx") and f.name != "manifest.json":
            shutil.copy2(f, out / f.name)
    start = time.perf_counter()
    quantize(fp32 / "model.onnx", out / "model.onnx", plan)
    return time.perf_counter() - start

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--base-fp32", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/int4-mix"))
    parser.add_argument("--parameters", type=int, default=0, help="default: read from the FP32 build's size / 4")
    args = parser.parse_args()
    fp32_bytes = sum(f.stat().st_size for f in args.fp32.glob("model.onnx*"))
    params = args.parameters or fp32_bytes // 4
    folders = {}
    for name, plan in VARIANTS.items():
        out = args.out / name.split()[0]
        folders[name] = str(out)
        build_variant(args.fp32, out, plan)
    ft = {a.model: a for a in genai.agreement(args.fp32, folders, base_dir=args.base_fp32)}
    speeds = genai.decode_speeds(folders)
    rows = []
    print("| build | bits/weight | size | top-1 vs FP32 | KL vs FP32 | KL vs base FP32 | decode tok/s | perplexity |")
    print("|---|---|---|---|---|---|---|---|")
    for name, folder in folders.items():
        size = sum(f.stat().st_size for f in Path(folder).glob("model.onnx*"))
        a = ft[name]
        b = a.kl_divergence_to_base
        rows.append({"build": name, "bpw": round(size * 8 / params, 2), "size_mb": round(size / 1e6, 1),
                     "top1_agreement": a.top1_agreement, "kl_divergence": a.kl_divergence, "kl_divergence_to_base": b, "decode_tps": speeds[name],
                     "perplexity": a.perplexity, "moved_toward_base": bool(b is not None and b < a.kl_divergence)})
        r = rows[-1]
        print(f"| {name} | {r['bpw']:.2f} | {r['size_mb']:.1f} MB | {a.top1_agreement:.3f} | {a.kl_divergence:.4f} | "
              f"{(f'{b:.4f}' if b is not None else '-')} | {speeds[name]:.0f} | {a.perplexity:.1f} |")
    (args.out / "int4_mix.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
