"""Issue 45's size sweep: ours against native llama.cpp on random-weight models of real shapes.

Run by ``benchmarks/llama_cpp.py --shapes NAME...`` (names of ``benchmarks/scale.py``'s shapes).
For each shape: a random-weight bf16 checkpoint of the published configuration (the one
``scale.py`` converts, no ``eos_token_id``, the tiny local tokenizer), our INT4 (the builder's
default) and INT8 builds (``slmops convert``'s own path, parity check included) staged as
registration serves them (LM head on the last position), and llama.cpp's Q4_0 and Q8_0 of the
same checkpoint (``convert_hf_to_gguf.py --outtype bf16``, then ``llama-quantize``). Everything
is cached under ``$SLMOPS_HOME/llama-cpp-sizes/SHAPE`` and reused.

Each prompt length of ``--prompt-lengths`` is one run of ``llama_cpp.py``'s alternating rounds
(first token from ``pp`` and our prompt pass, decode from ``tg`` after a context of the prompt and
our tokens after it). Decode is also given as a share of the memory-bandwidth bound: the
project's probe (:func:`slmops.toolkit.runtimes.genai.read_bandwidths`, ONNX Runtime reading a
512 MB matrix as decode does, at the benchmark's threads) divided by the weights each engine
reads per token (ours: the model files less tables only looked up by row; llama.cpp: the GGUF
file, whose tied token table is also its LM head).

The tiny tokenizer's pre-tokenizer is not one ``convert_hf_to_gguf.py`` knows (it identifies
each by a hash of how it splits a test text); a random-weight model's vocabulary means nothing,
so the converter is run with its pre-tokenizer named ``default`` (see :data:`CONVERT_SHIM`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: Runs ``convert_hf_to_gguf.py`` (argv[1]) with the remaining arguments, its pre-tokenizer named ``default``.
CONVERT_SHIM = """
import sys
from pathlib import Path
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(script).parent))
import convert_hf_to_gguf
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
convert_hf_to_gguf.main()
"""

PAIRS = (("int4", "Q4_0"), ("int8", "Q8_0"))


def shape_root(name: str) -> Path:
    """Where the shape's checkpoint, builds and GGUF files are kept."""
    from slmops.toolkit.core import settings

    return settings.home() / "llama-cpp-sizes" / name


def checkpoint(name: str, root: Path) -> Path:
    """The shape's random-weight bf16 checkpoint (written once, as ``scale.py`` writes it)."""
    from scale import SHAPES, without_eos

    from tests.models import make_shaped_model

    model = root / "hf"
    if not (model / "config.json").is_file():
        start = time.perf_counter()
        make_shaped_model(model, SHAPES[name])
        without_eos(model)
        print(f"{name}: random bf16 checkpoint written in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def our_build(model: Path, root: Path, precision: str) -> Path:
    """Our build at ``precision`` (``slmops convert``'s path, its parity check included; kept)."""
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages import convert

    out = root / precision
    if not (out / "genai_config.json").is_file():
        start = time.perf_counter()
        convert.convert(convert.ConvertSpec(model, out, Precision(precision)), progress=False)
        print(f"{root.name}: our {precision} built in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def gguf_files(model: Path, root: Path, quantizer: Path, python: str, threads: int) -> dict[str, Path]:
    """Q4_0 and Q8_0 of the checkpoint (through a bf16 GGUF, removed once both are made; kept)."""
    from llama_cpp import converter_deps, quantize
    from llama_cpp_native import LLAMA_CPP_PYTHON, unpack_sources

    folder = root / "gguf"
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {quant: folder / f"{quant.lower()}.gguf" for _, quant in PAIRS}
    if all(path.exists() for path in wanted.values()):
        return wanted
    source = folder / "f32.gguf"  # llama_cpp.quantize names its outputs beside this file
    if not source.exists():
        script = unpack_sources(LLAMA_CPP_PYTHON) / "convert_hf_to_gguf.py"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(converter_deps()),
                                                                          os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        staging = folder / "bf16.gguf.partial"
        with open(folder / "convert_hf_to_gguf.log", "w") as log:
            subprocess.run([python, "-c", CONVERT_SHIM, str(script), str(model), "--outtype", "bf16", "--outfile",
                            str(staging)], check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
        staging.rename(source)
        print(f"{root.name}: GGUF (bf16) written in {time.perf_counter() - start:.0f} s", flush=True)
    made = {quant: quantize(quantizer, source, quant, threads) for quant in wanted}
    source.unlink()
    return made


def read_mb(folder: Path) -> float:
    """Weights our build reads per decoded token, MB: its files less tables only looked up by row."""
    from slmops.toolkit.weights.weight_summary import lookup_only_mb

    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name.startswith("model.onnx")) / 1e6
    return size - lookup_only_mb(folder / "model.onnx")


def bound_share(decode_tps: float, bandwidth_gbs: float, weights_mb: float) -> float:
    """Decode tokens/s as a share of the bandwidth bound (every token reads the weights once).

    Example:
        >>> round(bound_share(50.0, 20.0, 800.0), 3)  # bound 25 tok/s: twice what memory allows
        2.0
    """
    return decode_tps / (bandwidth_gbs * 1e9 / (weights_mb * 1e6))


HEADERS = ("shape", "ours / llama.cpp", "prompt", "first token ms, ours / llama.cpp", "first token x",
           "decode tok/s, ours / llama.cpp", "decode x", "decode, share of the bound: ours / llama.cpp",
           "verdicts (first token <= 1.0x, decode >= 1.0x)")


def table_rows(results: list[dict]) -> list[list[str]]:
    """Rows of the sweep's table (medians; per-round ratio range in brackets)."""
    def cell(figure: dict) -> str:
        return f"{figure['median']:.2f} ({figure['min']:.2f}-{figure['max']:.2f})"

    rows = []
    for r in results:
        rows.append([r["shape"], f"{r['precision'].upper()} / {r['quant']}", str(r["prompt_tokens"]),
                     f"{r['ours']['first_token_ms']['median']:.0f} / {r['llama_cpp']['first_token_ms']['median']:.0f}",
                     cell(r["first_token_ratio"]),
                     f"{r['ours']['decode_tps']['median']:.1f} / {r['llama_cpp']['decode_tps']['median']:.1f}",
                     cell(r["decode_ratio"]), f"{r['ours_bound_share']:.0%} / {r['llama_bound_share']:.0%}",
                     f"{r['first_token_verdict']}, {r['decode_verdict']}"])
    return rows


def run(args: argparse.Namespace, tools) -> None:
    """The sweep (``llama_cpp.py --shapes``): every shape's two pairs at every prompt length; prints and writes JSON."""
    from llama_cpp import Pair, measure_speed, registered_pairs
    from report_md import append, section

    from slmops.toolkit.runtimes import genai

    started = time.perf_counter()
    bandwidth = genai.read_bandwidths([args.threads])[args.threads]
    print(f"Memory read bandwidth at {args.threads} threads (the project's probe): {bandwidth:.1f} GB/s", flush=True)
    results = []
    for name in args.shapes:
        root = shape_root(name)
        model = checkpoint(name, root)
        for precision, _ in PAIRS:
            our_build(model, root, precision)
        ggufs = gguf_files(model, root, tools.quantize, args.convert_python, args.threads)
        chosen = registered_pairs(tuple(Pair(f"ours {p.upper()}", p, q) for p, q in PAIRS), root, root)
        for prompt in args.prompt_lengths:
            speed = measure_speed(tools, chosen, root, ggufs, argparse.Namespace(**{**vars(args),
                                                                                  "prompt_tokens": prompt}))
            for pair, (precision, quant) in zip(chosen, PAIRS, strict=True):
                r = speed[pair.ours]
                ours_mb, theirs_mb = read_mb(Path(pair.folder)), ggufs[quant].stat().st_size / 1e6
                results.append({"shape": name, "precision": precision, "quant": quant, "prompt_tokens": prompt,
                                "gen_tokens": args.gen_tokens, "ours_read_mb": round(ours_mb, 1),
                                "llama_read_mb": round(theirs_mb, 1), "bandwidth_gbs": bandwidth,
                                "ours_bound_share": bound_share(r["ours"]["decode_tps"]["median"], bandwidth, ours_mb),
                                "llama_bound_share": bound_share(r["llama_cpp"]["decode_tps"]["median"], bandwidth,
                                                                 theirs_mb), **r})
                print(f"{name} {precision.upper()}/{quant} prompt {prompt}: first token "
                      f"{r['first_token_ratio']['median']:.2f}x, decode {r['decode_ratio']['median']:.2f}x", flush=True)
    out = args.out / "llama_cpp_sizes.json"
    args.out.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]), "bandwidth_gbs": bandwidth,
                               "results": results, "wall_s": round(time.perf_counter() - started, 1)}, indent=1))
    note = (f"{args.gen_tokens} generated tokens, {args.threads} threads; each engine's best of {args.reps} runs per "
            f"round, medians of {args.rounds} alternating rounds; read bandwidth {bandwidth:.1f} GB/s "
            f"(the project's probe, {args.threads} threads). Ours as registered (LM head on the last position).")
    text = section("Against native llama.cpp from 0.5B to 1.5B (random weights)", HEADERS, table_rows(results),
                   note=note)
    print(text)
    print(f"Wrote {out} ({time.perf_counter() - started:.0f} s)")
    if args.markdown:
        append(args.markdown, text)
