"""Benchmark: real model sizes (0.5B to 3.8B parameters) through convert, register and a short bench.

Random-initialized models of real configurations (shapes only, nothing downloaded: bf16
safetensors written tensor by tensor, a tiny local tokenizer) go through ``slmops convert``
at int4 and int8 (builder route), then Foundry Local registration and a short benchmark
(64-token prompt, 32 generated). For each it records wall time, peak RSS against the
checkpoint's size and against the prediction made before starting, size on disk, decode
speed and time to first token, and each build's parity check against transformers (the FP32
export's top-1 agreement, then the quantized build's). The configs are written as a config made
in code with transformers 5 is (``Qwen2Config(...)``): no ``eos_token_id`` in ``config.json`` or
``generation_config.json``, the tokenizer naming its ``eos_token``. Decode speed and first-token time come from ONNX Runtime
GenAI directly (the runtime Foundry Local wraps): a random model's tokens lie beyond its
tiny tokenizer, so Foundry Local streams them as empty text and its per-token timing
cannot be read.

The baseline, measured in the same run: the builder's own in-memory INT4 (``python -m
onnxruntime_genai.models.builder -p int4``, what the toolkit ran before), for the shapes
whose predicted peak fits in the memory available; the others are reported as the
prediction alone (e.g. the 3.8B shape's ~48 GB on a 24 GB machine). Writes ``scale.json``
and ``scale.png`` (each figure against parameter count) and prints a Markdown table. Usage::

    .venv/bin/python benchmarks/scale.py                              # all four shapes
    .venv/bin/python benchmarks/scale.py --shapes qwen2.5-0.5b --no-bench --no-baseline
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report_md import append, section

from slmops.toolkit.core import workers
from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.core.measure import available_mib
from slmops.toolkit.domain import memory
from slmops.toolkit.domain.options import Method, Precision
from slmops.toolkit.stages import bench, convert, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_catalog import unregister
from slmops.toolkit.weights.checkpoints import inspect_source
from tests.models import make_shaped_model

#: Published configurations (config.json fields that set the shapes).
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
                     "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    "llama-3.2-1b": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
                     "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "max_position_embeddings": 131072, "tie_word_embeddings": True, "rope_theta": 500000.0,
                     "rms_norm_eps": 1e-5},
    "qwen2.5-1.5b": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
                     "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    "phi-3-mini": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": 3072,
                   "intermediate_size": 8192, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096,
                   "tie_word_embeddings": False, "rope_theta": 10000.0, "rms_norm_eps": 1e-5},
}


def builder_own_int4(model: Path, out: Path, work: Path) -> dict:
    """The baseline: the builder's own INT4 (whole model in memory), when it is predicted to fit."""
    source = inspect_source(model)
    predicted = memory.estimate(parameters=source.parameters, largest_tensor=source.largest_tensor,
                                checkpoint_bytes=source.checkpoint_bytes, method=Method.OLIVE,
                                route_precision=Precision.INT4, quantized=False)
    free = available_mib()
    if predicted.peak_mib > free:
        return {"skipped": f"predicted {predicted.peak_mib / 1024:.1f} GiB > {free / 1024:.1f} GiB available",
                "predicted_peak_mib": round(predicted.peak_mib)}
    command = workers.python_module("onnxruntime_genai.models.builder", "-i", str(model), "-o", str(out),
                                    "-p", "int4", "-e", "cpu", "-c", str(work / "cache"),
                                    "--extra_options", "hf_token=false", "hf_remote=false")
    run = workers.run_tool(command, log_path=work / "builder-int4.log", name="builder int4 (baseline)")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(run.wall_s, 1), "peak_rss_mib": round(run.peak_rss_mib), "size_mb": round(size),
            "predicted_peak_mib": round(predicted.peak_mib)}


def without_eos(model: Path) -> None:
    """Leave ``eos_token_id`` out of the configs, as transformers 5's ``Qwen2Config(...)`` does."""
    for name in ("config.json", "generation_config.json"):
        file = model / name
        if file.is_file():
            data = json.loads(file.read_text())
            data.pop("eos_token_id", None)
            file.write_text(json.dumps(data, indent=2))


def measure_shape(name: str, work: Path, precisions: list[str], *, run_bench: bool, baseline: bool) -> dict:
    """Make the shape's model (reused), run the baseline, convert, register and bench; return its figures."""
    model = work / "models" / name
    if not (model / "config.json").is_file():
        start = time.perf_counter()
        make_shaped_model(model, SHAPES[name])
        without_eos(model)
        print(f"{name}: random bf16 checkpoint written in {time.perf_counter() - start:.0f} s", flush=True)
    source = inspect_source(model)
    row: dict = {"shape": name, "parameters": source.parameters, "checkpoint_mb": round(source.checkpoint_bytes / 1e6)}
    row["baseline_int4"] = (builder_own_int4(model, work / "baseline-int4", work) if baseline
                            else {"skipped": "not asked (--no-baseline)"})
    print(f"{name}: builder's own int4: {row['baseline_int4']}", flush=True)
    for precision in precisions:
        out = work / "onnx" / name / precision
        result = convert.convert(ConvertSpec(model, out, Precision(precision)), progress=True)
        m = result.manifest
        checks = {check.build: check.figures for check in (m.parity.checks if m.parity else ())}
        figures = {"wall_s": m.wall_s, "peak_rss_mib": m.peak_rss_mib,
                   "predicted_peak_mib": m.memory.predicted_peak_mib, "size_mb": round(m.size_mb),
                   "rss_per_checkpoint": round(m.peak_rss_mib * 2**20 / source.checkpoint_bytes, 2),
                   "steps_mib": m.memory.measured_steps,
                   "parity_steps_mib": m.parity.steps_mib if m.parity else {}, "eos_token_id_from": m.eos_token_id_from,
                   "parity": m.parity.verdict if m.parity else "not checked",
                   "fp32_top1": checks["fp32"].top1_agreement if "fp32" in checks else None,
                   "top1": checks[precision].top1_agreement if precision in checks else None,
                   "top1_up_to_ties": checks[precision].top1_up_to_ties if precision in checks else None,
                   "kl": checks[precision].kl_divergence if precision in checks else None}
        if run_bench:
            registered = f"scale-{name}-{precision}".replace(".", "-")
            register.register(out, registered, model_config=register.ModelConfig(threads=None), force=True)
            try:
                rows = bench.bench([registered], engines=("foundry-local", "ort-genai"), prompt_lengths=[64],
                                   gen_lengths=[32], repeats=2, warmup=1, progress=False)
            finally:
                unregister(registered)
            for r in rows:
                key = "foundry" if r.engine == "foundry-local" else "direct"
                figures |= {f"{key}_decode_tps": round(r.decode_tps, 1), f"{key}_ttft_ms": round(r.ttft_ms),
                            f"{key}_gen_tokens": r.gen_tokens, f"{key}_bench_rss_mb": round(r.peak_rss_mib)}
        row[precision] = figures
        print(f"{name} {precision}: {figures}", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # 3.8B builds are GBs; the figures are what we keep
    return row


HEADERS = ("shape", "params", "checkpoint (bf16)", "builder's own int4: peak RSS (x ckpt)", "precision", "wall",
           "peak RSS (x ckpt)", "its largest step", "predicted peak", "vs builder's own", "size",
           "FP32 parity top-1", "build top-1 (up to near ties)", "build KL (nats)", "decode tok/s", "TTFT")


def rows_of(rows: list[dict], precisions: list[str]) -> list[list[object]]:
    """The benchmarks page's table: one row per shape and precision."""
    out = []
    for row in rows:
        base = row["baseline_int4"]
        checkpoint = row["checkpoint_mb"] * 1e6 / 2**20  # MiB, as RSS is measured
        base_text = (f"{base['peak_rss_mib'] / 1024:.1f} GiB ({base['peak_rss_mib'] / checkpoint:.1f}x), "
                     f"{base['wall_s']:.0f} s" if "peak_rss_mib" in base else f"not run: {base['skipped']}")
        for precision in precisions:
            f = row[precision]
            versus = (f"{f['peak_rss_mib'] / base['peak_rss_mib']:.2f}x" if "peak_rss_mib" in base
                      and precision == "int4" else "")
            step = max(f["steps_mib"], key=f["steps_mib"].get)
            ttft = f.get("direct_ttft_ms", "")
            out.append([
                row["shape"], f"{row['parameters'] / 1e9:.2f}B", f"{checkpoint / 1024:.2f} GiB", base_text, precision,
                f"{f['wall_s']:.0f} s", f"{f['peak_rss_mib'] / 1024:.1f} GiB ({f['rss_per_checkpoint']:.2f}x)",
                f"{step} ({f['steps_mib'][step] / 1024:.1f} GiB)", f"{f['predicted_peak_mib'] / 1024:.1f} GiB", versus,
                f"{f['size_mb'] / 1000:.2f} GB", "-" if f.get("fp32_top1") is None else f"{f['fp32_top1']:.3f}",
                f"{f['top1']:.3f} ({f['top1_up_to_ties']:.3f})", f"{f['kl']:.3g}", f.get("direct_decode_tps", "-"),
                f"{ttft} ms" if ttft != "" else "-"])
    return out


def plot(rows: list[dict], precisions: list[str], target: Path) -> None:
    """Each figure against parameter count, one line per precision (and the baseline's peak)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("peak_rss_mib", "conversion peak RSS (MiB)"), ("wall_s", "conversion wall time (s)"), ("size_mb", "size (MB)"),
              ("direct_decode_tps", "decode (tok/s)"), ("direct_ttft_ms", "first token (ms, 64-token prompt)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    billions = [row["parameters"] / 1e9 for row in rows]
    for axis, (key, label) in zip(axes, panels, strict=True):
        for precision in precisions:
            values = [row[precision].get(key) for row in rows]
            points = [(x, y) for x, y in zip(billions, values, strict=True) if y is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=precision)
        if key == "peak_rss_mib":
            base = [(x, row["baseline_int4"]["peak_rss_mib"]) for x, row in zip(billions, rows, strict=True)
                    if "peak_rss_mib" in row["baseline_int4"]]
            predicted = [(x, row["baseline_int4"]["predicted_peak_mib"]) for x, row in zip(billions, rows, strict=True)
                         if "predicted_peak_mib" in row["baseline_int4"]]
            if base:
                axis.plot(*zip(*base, strict=True), marker="s", linestyle="--", label="builder's own int4")
            if predicted:
                axis.plot(*zip(*predicted, strict=True), linestyle=":", color="grey", label="its prediction")
            axis.plot(billions, [row["checkpoint_mb"] * 1e6 / 2**20 * 2.5 for row in rows], color="red", linewidth=0.8,
                      label="2.5x checkpoint (target)")
            axis.axhline(psutil.virtual_memory().total / 2**20, color="black", linewidth=0.8, linestyle="-.",
                         label="this machine's memory")
        axis.set_xlabel("parameters (B)")
        axis.set_title(label, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--precisions", nargs="+", choices=["int4", "int8"], default=["int4", "int8"])
    parser.add_argument("--work", default="outputs/scale", help="models, logs, scale.json and scale.png go here")
    parser.add_argument("--markdown", metavar="FILE", help="append the table as a dated section of the benchmarks page")
    parser.add_argument("--no-bench", action="store_true", help="convert only (no registration or benchmark)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the builder's own in-memory INT4 (the baseline of the 'vs builder's own' column)")
    args = parser.parse_args()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"{available_mib() / 1024:.1f} GiB available", flush=True)
    rows = []
    for name in args.shapes:
        try:
            rows.append(measure_shape(name, work, args.precisions, run_bench=not args.no_bench,
                                      baseline=not args.no_baseline))
        except SlmopsError as exc:  # a build the parity gate refuses is a finding: one line, then the next shape
            print(f"{name}: not measured: {exc}", file=sys.stderr, flush=True)
    if not rows:
        sys.exit("no shape was measured (see the lines above)")
    (work / "scale.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.precisions, work / "scale.png")
    text = section("Models from 0.5B to 4B: memory and speed", HEADERS, rows_of(rows, args.precisions))
    print(text)
    append(args.markdown, text)
    print(f"wrote {work / 'scale.json'} and {work / 'scale.png'}")


if __name__ == "__main__":
    main()
