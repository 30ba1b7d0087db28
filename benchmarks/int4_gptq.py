"""GPTQ-calibrated and rotated INT4 recipes against round-to-nearest at the same plans, on the demo's fine-tune.

Each variant is built from the fine-tuned FP32 ONNX build with the project's quantizer
(:func:`slmops.toolkit.weights.quantize.quantize`; ``algorithm="gptq"`` is calibrated on the bundled
Veloria set, see :mod:`slmops.toolkit.weights.gptq`) and measured with the same metric code as
``slmops recipes`` (:func:`slmops.toolkit.runtimes.genai.agreement` on the bundled reference text):
bits per weight (model files x 8 / parameters), size, top-1 and KL against the fine-tuned FP32,
KL against the base's FP32, decode tokens/s against the builder's INT4 in the same run, and
the build time. The ``-rotated`` variants rotate the residual stream and the values per head first
(``QuantPlan(rotate=True)``, :mod:`slmops.toolkit.weights.rotate`).

    .venv/bin/python benchmarks/int4_gptq.py --fp32 FT_FP32_DIR --base-fp32 BASE_FP32_DIR

The FP32 builds are those of ``benchmarks/int4_mix.py`` (``make demo`` leaves them in
``outputs/demo/models/fp32`` and ``control-fp32``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from int4_mix import build_variant  # this folder is on the path when a benchmark runs as a script

from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.runtimes import genai

README = str(Path(__file__).resolve().parents[1] / "outputs" / "calibration-readme.txt")
TABLE8 = {"lm_head_bits": 8, "embedding_bits": 8}
MIXED = {**TABLE8, "mix": "v-all-down-more-bits"}
VARIANTS = {
    "builder-default": QuantPlan(lm_head_bits=4, embedding_bits=32, lm_head_with_body=True),
    "int8-head": QuantPlan(**TABLE8),
    "gptq-int8-head": QuantPlan(algorithm="gptq", **TABLE8),
    "mixed": QuantPlan(**MIXED),
    "gptq-mixed": QuantPlan(algorithm="gptq", **MIXED),
    "gptq-q4_k_m-mix": QuantPlan(algorithm="gptq", **TABLE8, mix="q4_k_m"),
    # Calibrated on a generic text instead (this repository's README, 4,000 tokens, as a stand-in for a
    # generic corpus: never the reference text the metrics read).
    "gptq-readme-int8-head": QuantPlan(algorithm="gptq", **TABLE8, calibration=README),
    "gptq-readme-mixed": QuantPlan(algorithm="gptq", **MIXED, calibration=README),
    "mixed-b64": QuantPlan(**MIXED, block_size=64),
    "gptq-mixed-b64": QuantPlan(algorithm="gptq", **MIXED, block_size=64),
    "v-down-all-b64": QuantPlan(**TABLE8, mix="v-down-all", block_size=64),
    "gptq-v-down-all-b64": QuantPlan(algorithm="gptq", **TABLE8, mix="v-down-all", block_size=64),
    "int8": QuantPlan(bits=8, **TABLE8),
    "int8-head-rotated": QuantPlan(**TABLE8, rotate=True),
    "mixed-rotated": QuantPlan(**MIXED, rotate=True),
    "gptq-mixed-rotated": QuantPlan(algorithm="gptq", **MIXED, rotate=True),
    "gptq-readme-mixed-rotated": QuantPlan(algorithm="gptq", **MIXED, calibration=README, rotate=True),
    "gptq-readme-v-down-all-b64": QuantPlan(algorithm="gptq", **TABLE8, mix="v-down-all", block_size=64,
                                            calibration=README),
    "gptq-readme-v-down-all-b64-rotated": QuantPlan(algorithm="gptq", **TABLE8, mix="v-down-all", block_size=64,
                                                    calibration=README, rotate=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--base-fp32", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/int4-gptq"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants (default: all)")
    parser.add_argument("--parameters", type=int, default=0, help="default: read from the FP32 build's size / 4")
    args = parser.parse_args()
    if not Path(README).exists():  # the README's first 4,000 tokens' worth of text
        Path(README).parent.mkdir(parents=True, exist_ok=True)
        Path(README).write_text((Path(__file__).resolve().parents[1] / "README.md").read_text()[:16000])
    fp32_bytes = sum(f.stat().st_size for f in args.fp32.glob("model.onnx*"))
    params = args.parameters or fp32_bytes // 4
    folders, build_s = {}, {}
    for name in args.only or list(VARIANTS):
        out = args.out / name
        folders[name] = str(out)
        seconds = build_variant(args.fp32, out, VARIANTS[name])
        if seconds is not None:
            build_s[name] = round(seconds, 1)
        print(f"{name}: built in {build_s.get(name, '-')} s", flush=True)
    ft = {a.model: a for a in genai.agreement(args.fp32, folders, base_dir=args.base_fp32)}
    speeds = genai.decode_speeds(folders)
    reference_speed = speeds.get("builder-default")
    rows = []
    print("| build | bits/weight | size | top-1 vs FP32 | KL vs FP32 | KL vs base FP32 | decode tok/s | "
          "vs builder INT4 | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, folder in folders.items():
        size = sum(f.stat().st_size for f in Path(folder).glob("model.onnx*"))
        a = ft[name]
        b = a.kl_divergence_to_base
        ratio = speeds[name] / reference_speed if reference_speed else None
        rows.append({"build": name, "bpw": round(size * 8 / params, 2), "size_mb": round(size / 1e6, 1),
                     "top1_agreement": a.top1_agreement, "kl_divergence": a.kl_divergence,
                     "kl_divergence_to_base": b, "decode_tps": speeds[name],
                     "speed_vs_builder": round(ratio, 3) if ratio else None, "build_s": build_s.get(name),
                     "moved_toward_base": bool(b is not None and b < a.kl_divergence)})
        r = rows[-1]
        print(f"| {name} | {r['bpw']:.2f} | {r['size_mb']:.1f} MB | {a.top1_agreement:.3f} | {a.kl_divergence:.4f} | "
              f"{(f'{b:.4f}' if b is not None else '-')} | {speeds[name]:.0f} | "
              f"{(f'{ratio:.2f}' if ratio else '-')} | {r['build_s'] if r['build_s'] is not None else '-'} |",
              flush=True)
    (args.out / "int4_gptq.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
