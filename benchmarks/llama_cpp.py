"""Our builds against native llama.cpp on the same fine-tune: first token and decode from ``llama-bench``, quality on the same ids.

The question of issues 25, 29 and 45: on the same fine-tuned FP32 model, are our ONNX builds as
fast as llama.cpp's own conversion and quantizer at each precision, and how close to FP32? The
pairs: our INT4 (the builder's default) against Q4_0, our INT8 against Q8_0, our best-quality
INT4 recipe (``--recipe``, default ``mixed``) against Q4_K_M.

**Speed.** llama.cpp through its own ``llama-bench``, built natively from the llama.cpp inside the
llama-cpp-python sdist (``benchmarks/llama_cpp_native.py``; the portable build where the native
one crashes): ``pp`` of ``--prompt-tokens`` tokens (its prefill) and ``tg`` of ``--gen-tokens``
tokens after a context of that prompt (``-d``), at ``--threads`` threads. Ours through ONNX
Runtime GenAI directly (:func:`slmops.toolkit.runtimes.genai.time_generation`, the same threads
forced over the build's own ``genai_config.json``): first token (the prompt pass and choosing the
token) and decode tokens/s after it. Each round runs every engine in turn, ours and llama.cpp's
alternating and the order reversed every round, each ``--reps`` times keeping its best (a shared
machine only ever slows a run down); the ratios (ours / llama.cpp for first token,
ours / llama.cpp for decode tokens/s) are taken per round, so machine load hits both alike, and
reported as medians with their range over the rounds. Verdicts against the targets (first token
<= 1.0x, decode >= 1.0x): ``pass`` when every round meets it, ``fail`` when none does, ``warn``
when the rounds disagree (the median says which way it leans). The CPU model, its instruction
sets and llama.cpp's build options are printed beside the table.

**Quality** (``--quality``; needs ``--setup-quality``): top-1 agreement and KL divergence against
OUR FP32 build's logits, teacher-forced on the same token ids (the bundled reference text as the
FP32 build tokenizes it). Ours through the project's code (:func:`slmops.toolkit.runtimes.genai.agreement`);
llama.cpp's logits through ``llama-cpp-python`` (``benchmarks/llama_cpp_worker.py`` in its own venv,
``~/.slmops/llama-cpp-venv``), then the same formula (checked against the project's figures for our
builds). Bits per weight: the model files' bytes x 8 / the Hugging Face model's parameters.

GGUF files: the FP32 merged fine-tune through the sdist's ``convert_hf_to_gguf.py`` (run by the
project's Python, which has torch and transformers, with the converter's own ``gguf-py``), then
``llama-quantize``; kept in ``--out`` and reused.

    .venv/bin/python benchmarks/llama_cpp.py --setup      # once: native llama.cpp tools, the converter
    .venv/bin/python benchmarks/llama_cpp.py --models DIR --out /tmp/llama-cpp-bench

Inputs: ``--models`` holds our builds as the demo writes them (``fp32``, ``int8``, ``int4`` and
``recipes/NAME``), and ``--hf`` the FP32 merged fine-tune they were built from (default: the FP32
build's manifest ``source_path``). Everything goes to ``OUT/llama_cpp.json``; ``--markdown FILE``
appends the benchmarks page's section.

``--shapes qwen2.5-0.5b qwen2.5-1.5b`` runs the size sweep instead (``benchmarks/llama_cpp_sizes.py``):
random-weight models of those shapes, our INT4/INT8 as registered against Q4_0/Q8_0 at each of
``--prompt-lengths``, decode also as a share of the memory-bandwidth bound; models, builds and GGUF
files are kept under ``$SLMOPS_HOME/llama-cpp-sizes``::

    .venv/bin/python benchmarks/llama_cpp.py --shapes qwen2.5-0.5b --out /tmp/sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from llama_cpp_native import LLAMA_CPP_PYTHON, isa_cmake_args, require_tools, tools_root, unpack_sources

from slmops.toolkit.runtimes.genai_folders import load

GGUF = "0.19.0"
#: llama-cpp-python's build for the quality venv: only its libraries, AMX left out (see isa_cmake_args).
CMAKE_ARGS = "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF"
WORKER = Path(__file__).resolve().parent / "llama_cpp_worker.py"
#: The instruction sets printed beside the table (``/proc/cpuinfo`` names).
ISA_SHOWN = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_int8", "amx_bf16")
FIRST_TOKEN_TARGET = 1.0  # ours / llama.cpp, at most
DECODE_TARGET = 1.0  # ours / llama.cpp tokens/s, at least


class Verdict(StrEnum):
    """A target's verdict over the rounds."""

    PASS = "pass"  # every round meets the target
    WARN = "warn"  # the rounds disagree
    FAIL = "fail"  # no round meets it


@dataclass(frozen=True)
class Pair:
    """One of our builds and the llama.cpp quant it is measured against.

    Attributes:
        ours: the row name of our build.
        folder: our build's subfolder of ``--models``.
        quant: llama.cpp's quantization type.
    """

    ours: str
    folder: str
    quant: str


def registered_pairs(chosen: tuple[Pair, ...], models: Path, out: Path) -> tuple[Pair, ...]:
    """Each of ``chosen`` staged as registration serves it, in ``out``.

    Files linked; the LM head on the last position; gate and up projections fused; an INT4 graph in
    int8 compute also gets the prompt graph in FP32 compute (:mod:`slmops.toolkit.stages.register_prompt`).
    Staged afresh on every run, so a folder staged by an older registration is never measured as today's.
    """
    from slmops.toolkit.stages import register_prompt
    from slmops.toolkit.weights import lm_head

    staged = []
    for pair in chosen:
        source, target = models / pair.folder, out / "as-registered" / pair.folder
        shutil.rmtree(target, ignore_errors=True)  # only links and our own edits: cheap to stage again
        target.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file() and not (target / item.name).exists():
                os.link(item, target / item.name)
        lm_head.serve_last_position(target)
        config = json.loads((target / "genai_config.json").read_text())
        if register_prompt.serve_graphs(target, config):  # as registration: fused gate/up, the prompt in FP32 compute
            (target / "genai_config.json").unlink()  # a hard link to the source's: replaced, not written through
            (target / "genai_config.json").write_text(json.dumps(config, indent=4))
        staged.append(Pair(f"{pair.ours}, as registered", str(target), pair.quant))
    return tuple(staged)


def parse_also(text: str) -> Pair:
    """``NAME=MODEL_DIR:QUANT`` (``--also``) as a :class:`Pair`.

    Example:
        >>> parse_also("ours INT4 block 64=/m/int4-b64:Q4_0")
        Pair(ours='ours INT4 block 64', folder='/m/int4-b64', quant='Q4_0')
    """
    name, sep, rest = text.partition("=")
    folder, colon, quant = rest.rpartition(":")
    if not (sep and colon and name and folder and quant):
        raise ValueError(f"--also {text!r}: write NAME=MODEL_DIR:QUANT (e.g. 'ours INT4 b64=/models/int4-b64:Q4_0')")
    return Pair(name, folder, quant.upper())


def pairs(recipe: str) -> tuple[Pair, ...]:
    """The issue's pairs: builder INT4 / Q4_0, INT8 / Q8_0, the best-quality recipe / Q4_K_M.

    Example:
        >>> [p.quant for p in pairs("mixed")]
        ['Q4_0', 'Q8_0', 'Q4_K_M']
    """
    return (Pair("ours INT4 (builder default)", "int4", "Q4_0"), Pair("ours INT8", "int8", "Q8_0"),
            Pair(f"ours INT4 recipe {recipe}", f"recipes/{recipe}", "Q4_K_M"))


# --- pure helpers (tests/unit/test_llama_cpp_bench.py) ---------------------------------------------------------------

def safetensors_parameters(folder: str | os.PathLike[str]) -> int:
    """Parameters of a Hugging Face folder: the element counts in its ``*.safetensors`` headers (no weights read)."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {folder}")
    for file in files:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                total += int(np.prod(entry["shape"], dtype=np.int64))
    return total


def bits_per_weight(size_bytes: int, parameters: int) -> float:
    """File bytes x 8 / parameters: what every weight costs on disk, scales, zero points and all."""
    return size_bytes * 8 / parameters


def agreement_figures(ids: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Top-1 agreement, KL divergence (reference || candidate, nats) and perplexity, as ``slmops recipes`` computes them.

    The formula and rounding of :func:`slmops.toolkit.runtimes.genai.compare`, on logits ``[T, vocab]`` of the same ids.
    """
    from slmops.toolkit.domain.parity import log_softmax

    if reference.shape != candidate.shape:
        raise ValueError(f"logits of shape {candidate.shape} against the reference's {reference.shape}")
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    ref_log, cand_log = log_softmax(reference), log_softmax(candidate)
    positions = np.arange(len(ids) - 1)
    return {"tokens": len(ids),
            "top1_agreement": round(float((reference.argmax(-1) == candidate.argmax(-1)).mean()), 4),
            "kl_divergence": round(float((np.exp(ref_log) * (ref_log - cand_log)).sum(-1).mean()), 5),
            "perplexity": round(float(np.exp(-cand_log[positions, ids[1:]].mean())), 3)}


def llama_bench_commands(bench: str | os.PathLike[str], gguf: str | os.PathLike[str], prompt: int, gen: int,
                         threads: int, reps: int = 1) -> list[list[str]]:
    """The two ``llama-bench`` runs of one round: prefill of ``prompt`` tokens, then ``gen`` tokens after that context.

    ``reps`` repetitions each, JSON out, llama-bench's own warm-up kept.

    Example:
        >>> [c[3:9] for c in llama_bench_commands("llama-bench", "m.gguf", 128, 64, 2)]
        [['-p', '128', '-n', '0', '-d', '0'], ['-p', '0', '-n', '64', '-d', '128']]
    """
    common = ["-r", str(reps), "-t", str(threads), "-o", "json"]
    return [[str(bench), "-m", str(gguf), "-p", str(prompt), "-n", "0", "-d", "0", *common],
            [str(bench), "-m", str(gguf), "-p", "0", "-n", str(gen), "-d", str(prompt), *common]]


def parse_llama_bench(text: str) -> list[dict]:
    """``llama-bench -o json``'s tests as ``{"n_prompt", "n_gen", "n_depth", "ms", "tps", "threads", "type"}``.

    ``ms`` and ``tps`` list each repetition's time (the whole prompt for ``pp``, all generated
    tokens for ``tg``) and tokens per second.

    Raises:
        ValueError: the text is no llama-bench JSON list, or a test lacks its timing.
    """
    try:
        tests = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"llama-bench printed no JSON ({error}): {text[:200]!r}") from error
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"llama-bench printed no tests: {text[:200]!r}")
    out = []
    for test in tests:
        if not test.get("samples_ns") or not test.get("samples_ts"):
            raise ValueError(f"a llama-bench test without samples_ns/samples_ts: {sorted(test)}")
        out.append({"n_prompt": int(test["n_prompt"]), "n_gen": int(test["n_gen"]),
                    "n_depth": int(test.get("n_depth", 0)), "ms": [ns / 1e6 for ns in test["samples_ns"]],
                    "tps": [float(ts) for ts in test["samples_ts"]],
                    "threads": int(test.get("n_threads", 0)), "type": test.get("model_type", "")})
    return out


def llama_round(tests: list[dict], prompt: int, gen: int) -> dict:
    """One round's llama.cpp figures from the tests of :func:`llama_bench_commands`: its best prefill ms and decode tokens/s.

    Best of the round's repetitions, as :func:`ours_round` takes ours: on a shared machine a
    repetition is only ever slowed down by others, never sped up.

    Raises:
        ValueError: the prefill or the decode test is missing.
    """
    pp = [t for t in tests if t["n_prompt"] == prompt and t["n_gen"] == 0]
    tg = [t for t in tests if t["n_prompt"] == 0 and t["n_gen"] == gen and t["n_depth"] == prompt]
    if not (pp and tg):
        raise ValueError(f"llama-bench ran no pp{prompt} and tg{gen} @ d{prompt}: {tests}")
    return {"first_token_ms": min(pp[0]["ms"]), "decode_tps": max(tg[0]["tps"])}


def ours_round(runs: list) -> dict:
    """The best first token ms and decode tokens/s of one round's timed runs (``TimedRun`` each)."""
    return {"first_token_ms": min(t.ttft_s for t in runs) * 1000, "decode_tps": max(t.decode_tps for t in runs)}


def spread(values: list[float]) -> dict:
    """Median, lowest and highest of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def verdict(ratios: list[float], target: float, *, at_most: bool) -> Verdict:
    """``pass`` when every round's ratio meets ``target`` (``<=`` when ``at_most``, else ``>=``), ``fail`` when none does.

    Example:
        >>> verdict([0.9, 0.95, 1.02], 1.0, at_most=True)
        <Verdict.WARN: 'warn'>
    """
    met = [r <= target if at_most else r >= target for r in ratios]
    return Verdict.PASS if all(met) else Verdict.FAIL if not any(met) else Verdict.WARN


def pair_result(ours: list[dict], theirs: list[dict]) -> dict:
    """Per-round ratios of one pair (rounds in the same order on both sides), their spread and the verdicts."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"{len(ours)} rounds of ours against {len(theirs)} of llama.cpp")
    first = [o["first_token_ms"] / t["first_token_ms"] for o, t in zip(ours, theirs, strict=True)]
    decode = [o["decode_tps"] / t["decode_tps"] for o, t in zip(ours, theirs, strict=True)]
    return {"ours": {k: spread([r[k] for r in ours]) for k in ("first_token_ms", "decode_tps")},
            "llama_cpp": {k: spread([r[k] for r in theirs]) for k in ("first_token_ms", "decode_tps")},
            "first_token_ratio": spread(first), "decode_ratio": spread(decode),
            "first_token_verdict": str(verdict(first, FIRST_TOKEN_TARGET, at_most=True)),
            "decode_verdict": str(verdict(decode, DECODE_TARGET, at_most=False)),
            "rounds": len(ours)}


def speed_table(results: dict[str, dict]) -> list[str]:
    """Markdown rows of the speed comparison, one per pair (medians, range over the rounds in brackets)."""
    def cell(figure: dict, spec: str) -> str:
        return f"{figure['median']:{spec}} ({figure['min']:{spec}}-{figure['max']:{spec}})"

    lines = [("| ours | llama.cpp | first token ms, ours / llama.cpp | first token x | decode tok/s, ours / llama.cpp "
              "| decode x | verdicts (first token <= 1.0x, decode >= 1.0x) |"),
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['quant']} | {r['ours']['first_token_ms']['median']:.1f} / "
                     f"{r['llama_cpp']['first_token_ms']['median']:.1f} | {cell(r['first_token_ratio'], '.2f')} | "
                     f"{r['ours']['decode_tps']['median']:.1f} / {r['llama_cpp']['decode_tps']['median']:.1f} | "
                     f"{cell(r['decode_ratio'], '.2f')} | {r['first_token_verdict']}, {r['decode_verdict']} |")
    return lines


def quality_table(rows: list[dict]) -> list[str]:
    """Markdown rows of size, bits per weight, top-1 and KL against our FP32 ("-" where not measured)."""
    def cell(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = ["| build | size MB | bits/weight | top-1 vs our FP32 | KL vs our FP32 (nats) |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['build']} | {cell(row.get('size_mb'), '.1f')} | {cell(row.get('bpw'), '.2f')} | "
                     f"{cell(row.get('top1_agreement'), '.3f')} | {cell(row.get('kl_divergence'), '.4f')} |")
    return lines


def quality_targets(rows: list[dict]) -> list[dict]:
    """Issue 25: each INT4 build at no more bits per weight than Q4_K_M, KL no more, top-1 no less."""
    k = next((r for r in rows if r["build"] == "llama.cpp Q4_K_M"), None)
    if not k or k.get("kl_divergence") is None:
        return []
    out = []
    for row in rows:
        if row.get("kind") != "int4" or row.get("kl_divergence") is None:
            continue
        met = (row["bpw"] <= k["bpw"] and row["kl_divergence"] <= k["kl_divergence"]
               and row["top1_agreement"] >= k["top1_agreement"])
        out.append({"target": f"{row['build']}: bits/weight <= {k['bpw']:.2f}, KL <= {k['kl_divergence']:.4f}, "
                              f"top-1 >= {k['top1_agreement']:.3f} (llama.cpp Q4_K_M)",
                    "measured": f"{row['bpw']:.2f} bits/weight, KL {row['kl_divergence']:.4f}, "
                                f"top-1 {row['top1_agreement']:.3f}",
                    "verdict": str(Verdict.PASS if met else Verdict.FAIL)})
    return out


def round_order(names: list[str], round_: int) -> list[str]:
    """The engines of one round: as given on even rounds, reversed on odd ones."""
    return list(names) if round_ % 2 == 0 else list(reversed(names))


def machine_isa(flags: set[str]) -> list[str]:
    """The instruction sets of :data:`ISA_SHOWN` among ``flags``."""
    return [flag for flag in ISA_SHOWN if flag in flags]


# --- GGUF files --------------------------------------------------------------------------------------------------

def converter_deps() -> Path:
    """What the converter needs that the project's venv lacks (``sentencepiece``: it imports it for every Llama)."""
    return tools_root() / "convert-deps"


def setup_converter() -> Path:
    """The sdist's llama.cpp sources (with ``convert_hf_to_gguf.py``) and the converter's ``sentencepiece``."""
    source = unpack_sources(LLAMA_CPP_PYTHON)
    if not (converter_deps() / "sentencepiece").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--target", str(converter_deps()), "sentencepiece"],
                       check=True)
    return source


def convert(hf: Path, out: Path, python: str) -> Path:
    """``convert_hf_to_gguf.py --outtype f32`` of the merged fine-tune (kept and reused)."""
    target = out / "f32.gguf"
    if target.exists():
        return target
    script = unpack_sources(LLAMA_CPP_PYTHON) / "convert_hf_to_gguf.py"
    start = time.perf_counter()
    staging = out / "f32.gguf.partial"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(converter_deps()),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(out / "convert_hf_to_gguf.log", "w") as log:
        subprocess.run([python, str(script), str(hf), "--outtype", "f32", "--outfile", str(staging)],
                       check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    staging.rename(target)
    print(f"Converted {hf} to {target} in {time.perf_counter() - start:.0f} s", flush=True)
    return target


def quantize(quantizer: Path, f32: Path, quant: str, threads: int) -> Path:
    """``llama-quantize`` of the F32 GGUF to ``quant`` (its defaults; kept and reused)."""
    target = f32.with_name(f"{quant.lower()}.gguf")
    if not target.exists():
        staging = target.with_name(target.name + ".partial")
        with open(f32.with_name("llama-quantize.log"), "a") as log:
            subprocess.run([str(quantizer), str(f32), str(staging), quant, str(threads)], check=True, stdout=log,
                           stderr=subprocess.STDOUT)
        staging.rename(target)
    return target


# --- the quality venv (llama-cpp-python, for logits) --------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_quality(venv: Path) -> None:
    """The venv of ``llama-cpp-python`` built from its sdist (the logits of the quality comparison); skipped when there."""
    python = venv_python(venv)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(python), "-c", "import llama_cpp"], check=False, capture_output=True).returncode == 0:
        return
    from slmops.toolkit.core import system

    env = {**os.environ, "PIP_NO_CACHE_DIR": "1",
           "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", " ".join([CMAKE_ARGS, *isa_cmake_args(system.cpu_flags())])),
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))}
    print(f"Building llama-cpp-python {LLAMA_CPP_PYTHON} from source in {venv} (CMAKE_ARGS={env['CMAKE_ARGS']})",
          flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--no-binary", "llama-cpp-python",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "numpy"], check=True, env=env)


class LlamaWorker:
    """``benchmarks/llama_cpp_worker.py`` in the quality venv: one JSON request a line, one JSON answer a line."""

    def __init__(self, python: Path, log: Path):
        self.log = open(log, "a")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)

    def __call__(self, cmd: str, **job) -> dict:
        self.process.stdin.write(json.dumps({"cmd": cmd, **job}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp worker exited ({self.process.wait()}); see {self.log.name}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"llama.cpp worker, {cmd}: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=60)
        self.log.close()


# --- the benchmark -----------------------------------------------------------------------------------------------

def hf_source(fp32: Path, given: Path | None) -> Path:
    if given:
        return given
    manifest = fp32 / "manifest.json"
    if manifest.is_file():
        source = json.loads(manifest.read_text()).get("source_path")
        if source and Path(source, "config.json").is_file():
            return Path(source)
    sys.exit(f"no --hf given and {manifest} names no source_path with a config.json: pass --hf MERGED_DIR")


def measure_speed(tools, chosen: tuple[Pair, ...], models: Path, ggufs: dict[str, Path], args) -> dict[str, dict]:
    """The rounds: every pair's two engines once per round, alternating, order reversed every other round."""
    from tokenizers import Tokenizer

    from slmops.toolkit.domain.prompts import prompt_text
    from slmops.toolkit.runtimes import genai

    tokenizer = Tokenizer.from_file(str(models / chosen[0].folder / "tokenizer.json"))
    prompt = tokenizer.encode(prompt_text(tokenizer, args.prompt_tokens), add_special_tokens=False).ids
    loaded = {p.ours: load(models / p.folder, args.threads) for p in chosen}
    for pair in chosen:  # warm-up: one untimed run of ours (llama-bench warms up itself)
        genai.time_generation(loaded[pair.ours], prompt, args.gen_tokens, repeats=1, warmup=0)

    def llama(pair: Pair) -> dict:
        tests = []
        for command in llama_bench_commands(tools.bench, ggufs[pair.quant], args.prompt_tokens, args.gen_tokens,
                                            args.threads, args.reps):
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
            if done.returncode:
                sys.exit(f"llama-bench failed (exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}")
            tests += parse_llama_bench(done.stdout)
        return llama_round(tests, args.prompt_tokens, args.gen_tokens)

    engines = [(pair, side) for pair in chosen for side in ("ours", "llama.cpp")]
    runs: dict[tuple[str, str], list[dict]] = {(p.ours, s): [] for p, s in engines}
    for round_ in range(args.rounds):
        for pair, side in round_order(engines, round_):
            if side == "ours":
                done = genai.time_generation(loaded[pair.ours], prompt, args.gen_tokens, repeats=args.reps, warmup=0)
                runs[(pair.ours, side)].append(ours_round(done))
            else:
                runs[(pair.ours, side)].append(llama(pair))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    return {p.ours: {"quant": p.quant, **pair_result(runs[(p.ours, "ours")], runs[(p.ours, "llama.cpp")]),
                     "raw": {"ours": runs[(p.ours, "ours")], "llama_cpp": runs[(p.ours, "llama.cpp")]}}
            for p in chosen}


def measure_quality(models: Path, chosen: tuple[Pair, ...], ggufs: dict[str, Path], parameters: int, venv: Path,
                    out: Path, threads: int, lora_in_graph: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Size, bits per weight, top-1 and KL against our FP32 for our builds and the GGUF files; and the formula check.

    ``lora_in_graph``: a build of the same fine-tune with its LoRA kept in the graph (``slmops convert ADAPTER
    --adapter-in-graph``, its LoRA's bytes counted), measured as one of ours (issue 44).
    """
    from slmops.toolkit.domain.prompts import reference_text
    from slmops.toolkit.runtimes import genai

    fp32 = models / "fp32"
    rows = [{"build": p.ours, "kind": "int8" if p.quant == "Q8_0" else "int4", "folder": str(models / p.folder)}
            for p in chosen]
    if lora_in_graph is not None:
        rows.append({"build": f"{lora_in_graph.name} (LoRA in the graph)", "kind": "int4", "folder": str(lora_in_graph)})
    for row in rows:
        row["size_bytes"] = sum(f.stat().st_size for f in Path(row["folder"]).glob("model.onnx*"))
    theirs = [{"build": f"llama.cpp {quant}", "kind": quant, "file": str(gguf), "size_bytes": gguf.stat().st_size}
              for quant, gguf in ggufs.items()]
    for row in rows + theirs:
        row["size_mb"] = round(row["size_bytes"] / 1e6, 1)
        row["bpw"] = round(bits_per_weight(row["size_bytes"], parameters), 2)
    if not venv_python(venv).exists():
        print(f"Quality: not measured (no llama-cpp-python venv at {venv}: run with --setup-quality)", flush=True)
        return rows + theirs, []
    text = reference_text()
    project = {a.model: a for a in genai.agreement(fp32, {r["build"]: r["folder"] for r in rows})}
    ids, reference = genai.logits(fp32, text)
    check = []
    for row in rows:
        row.update({k: getattr(project[row["build"]], k) for k in ("top1_agreement", "kl_divergence", "perplexity")})
        cand_ids, cand = genai.logits(row["folder"], text)
        mine = agreement_figures(ids, reference, cand)
        check.append({"build": row["build"], "top1_diff": abs(mine["top1_agreement"] - row["top1_agreement"]),
                      "kl_diff": abs(mine["kl_divergence"] - row["kl_divergence"]),
                      "same_ids": bool(np.array_equal(cand_ids, ids))})
    worker = LlamaWorker(venv_python(venv), out / "llama_cpp_worker.log")
    try:
        for row in theirs:
            npy = out / f"{Path(row['file']).stem}.logits.npy"
            worker("logits", model=row["file"], ids=[int(i) for i in ids], out=str(npy), threads=threads)
            row.update({k: v for k, v in agreement_figures(ids, reference, np.load(npy)).items() if k != "tokens"})
            npy.unlink()
    finally:
        worker.close()
    print(f"Quality on {len(ids)} ids of the bundled reference text; the benchmark's formula against the project's "
          f"for our builds: max |top-1 diff| {max(c['top1_diff'] for c in check)}, "
          f"max |KL diff| {max(c['kl_diff'] for c in check):.1e}", flush=True)
    return rows + theirs, check


def sweep_shapes(args: argparse.Namespace) -> None:
    """``--shapes``: the size sweep of ``llama_cpp_sizes.py``, its shape names checked before any work."""
    import llama_cpp_sizes
    from scale import SHAPES

    unknown = [name for name in args.shapes if name not in SHAPES]
    if unknown:
        sys.exit(f"--shapes {' '.join(unknown)}: name one of {', '.join(SHAPES)}")
    if min(args.prompt_lengths, default=0) < 1 or min(args.rounds, args.reps, args.threads) < 1 or args.gen_tokens < 2:
        sys.exit("--prompt-lengths, --rounds, --reps and --threads must be at least 1 and --gen-tokens at least 2")
    if not (converter_deps() / "sentencepiece").is_dir():
        sys.exit(f"the GGUF converter is not set up: run  {Path(sys.executable).name} {sys.argv[0]} --setup")
    llama_cpp_sizes.run(args, require_tools())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--setup", action="store_true",
                        help="build native llama-bench/llama-server/llama-quantize and unpack the converter, then exit")
    parser.add_argument("--setup-quality", action="store_true",
                        help="also build llama-cpp-python in its own venv (the quality comparison's logits)")
    parser.add_argument("--models", type=Path, default=Path("outputs/demo/models"),
                        help="our builds: fp32, int8, int4 and recipes/NAME in it (default: the demo's)")
    parser.add_argument("--recipe", default="mixed", help="our best-quality INT4 recipe, measured against Q4_K_M")
    parser.add_argument("--hf", type=Path, help="the FP32 merged fine-tune (default: the FP32 build's source_path)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/llama-cpp-bench"), help="GGUF files and llama_cpp.json")
    parser.add_argument("--llama-venv", type=Path, default=None, help="the quality venv (default: ~/.slmops/llama-cpp-venv)")
    parser.add_argument("--convert-python", default=sys.executable,
                        help="a Python with torch and transformers for convert_hf_to_gguf.py (default: this one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each running every engine in turn")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs of an engine in its turn of a round; the round keeps its best")
    parser.add_argument("--only", help="comma-separated quants of the pairs to run (Q4_0, Q8_0, Q4_K_M; default all)")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality comparison")
    parser.add_argument("--as-registered", action="store_true",
                        help="also time each of our builds as registration serves it (LM head on the last position)")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=MODEL_DIR:QUANT",
                        help="also time this build against that llama.cpp quant (repeatable)")
    parser.add_argument("--markdown", type=Path, help="append the benchmarks page's section to this file")
    parser.add_argument("--lora-in-graph", type=Path, help="a build of the fine-tune with its LoRA in the graph "
                        "(slmops convert ADAPTER --adapter-in-graph): one more row of the quality table")
    parser.add_argument("--shapes", nargs="+", metavar="SHAPE",
                        help="instead of the fine-tune: the size sweep on random-weight models of these shapes "
                             "(benchmarks/scale.py's names, e.g. qwen2.5-0.5b qwen2.5-1.5b; see llama_cpp_sizes.py)")
    parser.add_argument("--prompt-lengths", nargs="+", type=int, default=[128, 512],
                        help="with --shapes: the prompt lengths of the sweep")
    args = parser.parse_args()

    from slmops.toolkit.core import settings, system

    venv = args.llama_venv or settings.home() / "llama-cpp-venv"
    if args.setup or args.setup_quality:
        import llama_cpp_native

        llama_cpp_native.setup()
        setup_converter()
        if args.setup_quality:
            setup_quality(venv)
        return
    if args.shapes:
        return sweep_shapes(args)
    tools = require_tools()
    if min(args.rounds, args.reps, args.threads, args.prompt_tokens) < 1 or args.gen_tokens < 2:
        sys.exit("--rounds, --reps, --threads and --prompt-tokens must be at least 1 and --gen-tokens at least 2")
    chosen = pairs(args.recipe)
    if args.only:
        wanted = {q.strip().upper() for q in args.only.split(",")}
        chosen = tuple(p for p in chosen if p.quant.upper() in wanted)
        if not chosen:
            sys.exit(f"--only {args.only}: name one of {', '.join(p.quant for p in pairs(args.recipe))}")
    try:
        extra = tuple(parse_also(text) for text in args.also)
    except ValueError as error:
        sys.exit(str(error))
    for folder in ["fp32", *(p.folder for p in chosen + extra)]:
        if not (args.models / folder / "genai_config.json").is_file():
            sys.exit(f"no build in {args.models / folder}: convert it (slmops convert ... -o {args.models / folder}) "
                     "or pass --models")
    started = time.perf_counter()
    hf = hf_source(args.models / "fp32", args.hf)
    parameters = safetensors_parameters(hf)
    args.out.mkdir(parents=True, exist_ok=True)
    if not (converter_deps() / "sentencepiece").is_dir():
        sys.exit(f"the GGUF converter is not set up: run  {Path(sys.executable).name} {sys.argv[0]} --setup")
    f32 = convert(hf, args.out, args.convert_python)
    timed = chosen + (registered_pairs(chosen, args.models, args.out) if args.as_registered else ()) + extra
    ggufs = {p.quant: quantize(tools.quantize, f32, p.quant, args.threads) for p in timed}

    rows, check = ([], []) if args.no_quality else measure_quality(args.models, chosen, ggufs, parameters, venv,
                                                                    args.out, args.threads, args.lora_in_graph)
    speed = measure_speed(tools, timed, args.models, ggufs, args)

    isa = machine_isa(system.cpu_flags())
    machine = (f"{system.cpu_model()}; {', '.join(isa) or 'none of ' + ', '.join(ISA_SHOWN)}; "
               f"{os.cpu_count()} CPUs; llama.cpp {tools.flavor} build ({' '.join(a for a in tools.cmake_args if 'GGML' in a)})")
    print()
    print(f"Same fine-tune ({hf.name}, {parameters:,} parameters); {args.prompt_tokens} prompt / {args.gen_tokens} "
          f"generated tokens, {args.threads} threads; llama.cpp: llama-bench pp{args.prompt_tokens} and "
          f"tg{args.gen_tokens} @ d{args.prompt_tokens}; each engine's best of {args.reps} runs per round, medians of "
          f"{args.rounds} alternating rounds, range in brackets")
    print(f"Machine: {machine}")
    lines = speed_table(speed)
    for line in lines:
        print(line)
    if rows:
        print()
        for line in quality_table(rows):
            print(line)
    goals = quality_targets(rows)
    print()
    for name, r in speed.items():
        print(f"{name} vs llama.cpp {r['quant']}: first token {r['first_token_ratio']['median']:.2f}x (target <= "
              f"{FIRST_TOKEN_TARGET}x) -> {r['first_token_verdict'].upper()}; decode {r['decode_ratio']['median']:.2f}x "
              f"(target >= {DECODE_TARGET}x) -> {r['decode_verdict'].upper()}")
    for goal in goals:
        print(f"quality: {goal['target']}: {goal['measured']} -> {goal['verdict'].upper()}")
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "hf_source": str(hf),
              "parameters": parameters, "machine": machine, "cpu_model": system.cpu_model(), "isa": isa,
              "llama_cpp_tools": {"flavor": str(tools.flavor), "cmake_args": list(tools.cmake_args),
                                  "llama_cpp_python_sdist": LLAMA_CPP_PYTHON},
              "settings": {"threads": args.threads, "prompt_tokens": args.prompt_tokens,
                           "gen_tokens": args.gen_tokens, "rounds": args.rounds, "reps": args.reps},
              "speed": speed, "quality": rows, "formula_check": check, "quality_targets": goals,
              "wall_s": round(time.perf_counter() - started, 1)}
    (args.out / "llama_cpp.json").write_text(json.dumps(result, indent=1))
    print(f"Wrote {args.out / 'llama_cpp.json'} ({result['wall_s']:.0f} s)")
    if args.markdown:
        from report_md import append, command_line

        day = time.strftime("%Y-%m-%d", time.gmtime())
        text = ["## Against native llama.cpp on the same fine-tune", "",
                f"Measured {day}. Machine: {machine}. Command: `{command_line()}`.", "", *lines]
        if rows:
            text += ["", *quality_table(rows)]
        append(args.markdown, "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
