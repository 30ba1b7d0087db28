"""Stage 4: benchmark registered models through Foundry Local and ONNX Runtime GenAI directly.

Each model and engine is measured in its own child process, so its peak RSS is the
process's own and models do not share memory. Prompts of the asked token lengths are cut
from one fixed text with the model's tokenizer; both engines get the same token ids (the
chat template applied once, as Foundry's ChatSession does); decoding is greedy; warm-up
runs are discarded. The direct engine generates exactly ``gen_tokens`` (EOS ignored, the
method of ONNX Runtime GenAI's ``benchmark_e2e.py``); Foundry Local's request options have
no minimum length, so its rows record how many tokens it did generate.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from toolkit import settings
from toolkit.errors import SlmopsError

_FILLER = (
    "Small language models run on laptops and phones when they are converted and quantized. "
    "The weights shrink from thirty-two bits to eight or four, the model loads faster, and each "
    "generated token needs fewer bytes read from memory. Quality drops a little, so every "
    "precision is tested against the full-precision reference before it is deployed. "
)


@dataclass(frozen=True)
class BenchRow:
    """One benchmark figure set: one model at one prompt length (mean over repeats).

    Fields follow SPEC.md's ``bench.json`` row; ``target_prompt_tokens`` is the asked
    length, ``prompt_tokens`` what the runtime counted (template included).
    """

    model: str
    precision: str
    engine: str
    target_prompt_tokens: int
    prompt_tokens: int
    gen_tokens: float
    ttft_ms: float
    ttft_ms_sd: float
    prefill_tps: float
    decode_tps: float
    decode_tps_sd: float
    decode_tps_p50: float
    decode_tps_p90: float
    decode_cv: float
    noisy: bool
    e2e_ms: float
    peak_rss_mb: float
    cpu_percent: float
    size_mb: float
    load_s: float
    repeats: int


#: Coefficient of variation of decode tokens/s above which a figure is flagged as too noisy to trust.
NOISY_CV = 0.10


def _row(name: str, precision: str, engine: str, length: int, prompt_tokens: int, runs: list[dict],
         size_mb: float, load_s: float, peak_rss_mb: float) -> dict:
    """A :class:`BenchRow` (as a dict) from timed runs of ``{ttft_s, total_s, gen_tokens, cpu_percent}``."""
    ttfts = [r["ttft_s"] * 1000 for r in runs]
    decodes = [(r["gen_tokens"] - 1) / (r["total_s"] - r["ttft_s"]) for r in runs
               if r["gen_tokens"] > 1 and r["total_s"] > r["ttft_s"]] or [0.0]
    mean = statistics.mean(decodes)
    sd = statistics.stdev(decodes) if len(decodes) > 1 else 0.0
    ordered = sorted(decodes)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    cv = sd / mean if mean else 0.0
    return asdict(BenchRow(
        model=name, precision=precision, engine=engine, target_prompt_tokens=length, prompt_tokens=prompt_tokens,
        gen_tokens=statistics.mean(r["gen_tokens"] for r in runs),
        ttft_ms=round(statistics.mean(ttfts), 2), ttft_ms_sd=round(statistics.stdev(ttfts), 2) if len(ttfts) > 1 else 0.0,
        prefill_tps=round(prompt_tokens / (statistics.mean(ttfts) / 1000), 1),
        decode_tps=round(mean, 2), decode_tps_sd=round(sd, 2), decode_tps_p50=round(pick(0.5), 2),
        decode_tps_p90=round(pick(0.9), 2), decode_cv=round(cv, 4), noisy=cv > NOISY_CV,
        e2e_ms=round(statistics.mean(r["total_s"] for r in runs) * 1000, 2), peak_rss_mb=round(peak_rss_mb, 1),
        cpu_percent=round(statistics.mean(r["cpu_percent"] for r in runs), 1), size_mb=size_mb,
        load_s=round(load_s, 3), repeats=len(runs),
    ))


def _prompt_of(tokenizer, content_tokens: int) -> str:
    """The repeated filler cut to its first ``content_tokens`` tokens."""
    text = _FILLER
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    while len(ids) < content_tokens:
        text += _FILLER
        ids = tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.decode(ids[:content_tokens])


def measure_model(name: str, prompt_lengths: list[int], gen_tokens: int, repeats: int, warmup: int,
                  cache: str | None) -> dict:
    """Measure one model through Foundry Local in this process (the child's job).

    Returns:
        ``rows`` (dicts), ``prompts`` (the token ids each length became, for the direct engine),
        and the model's ``folder``, ``precision`` and ``size_mb``.
    """
    from tokenizers import Tokenizer

    from toolkit.convert import dir_size_mb, read_manifest
    from toolkit.foundry import LoadedModel
    from toolkit.register import models_root

    folder = models_root(cache) / name.split(":")[0]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    precision = read_manifest(folder).get("precision", "?")
    size_mb = round(dir_size_mb(folder), 1)
    start = time.perf_counter()
    model = LoadedModel(name, cache)
    load_s = time.perf_counter() - start
    rows, prompts = [], []
    try:
        # The template adds its own tokens (role markers, a default system prompt): measure
        # them once so prompts hit the asked length.
        overhead = max(0, model.prompt_tokens([{"role": "user", "content": _prompt_of(tokenizer, 4)}]) - 4)
        for length in prompt_lengths:
            messages = [{"role": "user", "content": _prompt_of(tokenizer, max(1, length - overhead))}]
            prompts.append(model.prompt_ids(messages))
            for _ in range(warmup):
                model.generate(messages, max_tokens=gen_tokens)
            runs = []
            for _ in range(repeats):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                g = model.generate(messages, max_tokens=gen_tokens)
                cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
                runs.append({"ttft_s": g.ttft_s, "total_s": g.total_s, "gen_tokens": g.completion_tokens,
                             "cpu_percent": cpu, "prompt_tokens": g.prompt_tokens})
            rows.append((length, runs))
    finally:
        model.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": [_row(name, precision, "foundry-local", length, runs[0]["prompt_tokens"], runs, size_mb, load_s,
                          peak) for length, runs in rows],
            "prompts": prompts, "folder": str(folder), "precision": precision, "size_mb": size_mb}


def measure_direct(name: str, job: dict, prompt_lengths: list[int], gen_tokens: int, repeats: int,
                   warmup: int) -> list[dict]:
    """The same prompts (token ids) through ONNX Runtime GenAI directly, in its own child process."""
    from toolkit import genai

    result = genai.run("bench", job["folder"], files={"job": json.dumps({
        "prompts": job["prompts"], "gen_tokens": gen_tokens, "repeats": repeats, "warmup": warmup})})
    return [_row(name, job["precision"], "ort-genai", length, len(ids), runs, job["size_mb"], result["load_s"],
                 result["peak_rss_mb"]) for length, ids, runs in zip(prompt_lengths, job["prompts"], result["runs"],
                                                                      strict=True)]


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """Measured memory read bandwidth in GB/s: the best of ``repeats`` sums over a buffer larger than caches.

    Example:
        >>> memory_bandwidth_gbs() > 1
        True
    """
    import numpy as np

    buffer = np.ones(megabytes * 1_000_000 // 8, dtype=np.float64)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


def decode_ceiling(rows: list[dict], bandwidth_gbs: float) -> list[dict]:
    """Each row's decode speed against the bandwidth bound: every token reads all weights once.

    The bound is bandwidth / model size on disk (the weights); real decode also reads the KV
    cache and spends time computing, so 100% is out of reach, and the gap says how far.
    """
    out = []
    for row in rows:
        ceiling = bandwidth_gbs * 1e9 / (row["size_mb"] * 1e6) if row["size_mb"] else 0.0
        out.append({"model": row["model"], "engine": row["engine"], "target_prompt_tokens": row["target_prompt_tokens"],
                    "decode_tps": row["decode_tps"], "ceiling_tps": round(ceiling, 1),
                    "percent_of_ceiling": round(100 * row["decode_tps"] / ceiling, 1) if ceiling else 0.0})
    return out


def summary(report: dict, quality: dict | None = None, *, baseline: str = "fp32") -> list[str]:
    """One sentence per precision against the baseline precision (Foundry Local rows, shortest prompt).

    Args:
        report: A written ``bench.json``.
        quality: The checklist's ``test.json``, for top-1 agreement when present.

    Example:
        >>> summary(report)[0]
        'int4: 3.3x fp32 decode speed at 0.37x size'
    """
    rows = rows_for(report)
    if not rows:
        return []
    shortest = min(r["target_prompt_tokens"] for r in rows)
    by_precision = {r["precision"]: r for r in rows if r["target_prompt_tokens"] == shortest}
    base = by_precision.get(baseline)
    top1 = {}
    for check in (quality or {}).get("checks", []):
        if check["check"] == "quality" and check["case"] == "top1-agreement":
            top1[check["model"]] = check["value"]
    sentences = []
    for precision, row in by_precision.items():
        if base is None or precision == baseline or not base["decode_tps"]:
            continue
        text = (f"{precision}: {row['decode_tps'] / base['decode_tps']:.1f}x {baseline} decode speed at "
                f"{row['size_mb'] / base['size_mb']:.2f}x size")
        if row["model"] in top1:
            text += f", top-1 agreement {top1[row['model']]}"
        sentences.append(text)
    return sentences


def run_metadata() -> dict:
    """Versions, threads, CPU and time of this run, for ``bench.json``."""
    import importlib.metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("foundry-local-sdk", "onnxruntime-genai-core", "onnxruntime-genai", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": os.cpu_count(), "python": platform.python_version(),
            "versions": versions, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


ENGINES = ("foundry-local", "ort-genai")


def bench(names: list[str], *, prompt_lengths: list[int] = (16, 128), gen_tokens: int = 32, repeats: int = 3,
          warmup: int = 1, cache: str | Path | None = None, engines: tuple[str, ...] = ENGINES,
          progress: bool = True) -> list[BenchRow]:
    """Benchmark each registered model in fresh child processes, through each engine.

    Example:
        >>> rows = bench(["smollm2-fp32", "smollm2-int4"], gen_tokens=32)
        >>> {r.engine for r in rows}
        {'foundry-local', 'ort-genai'}
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0 or gen_tokens < 2 or not prompt_lengths:
        raise SlmopsError("bench needs repeats >= 1, warmup >= 0, gen_tokens >= 2 and at least one prompt length.")
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise SlmopsError(f"Unknown engines {sorted(unknown)}; choose from {list(ENGINES)}.")
    cache_arg = str(settings.cache_dir(cache))
    rows: list[BenchRow] = []
    for name in tqdm(names, desc="bench", unit="model", disable=not progress):
        job = json.dumps({"name": name, "prompt_lengths": list(prompt_lengths), "gen_tokens": gen_tokens,
                          "repeats": repeats, "warmup": warmup, "cache": cache_arg})
        env = {**os.environ, **settings.OFFLINE_ENV}
        done = subprocess.run([sys.executable, "-m", "toolkit.bench", job], capture_output=True, text=True, env=env,
                              check=False)
        if done.returncode != 0:
            raise SlmopsError(f"Benchmarking {name} failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if "foundry-local" in engines:
            rows += [BenchRow(**row) for row in result["rows"]]
        if "ort-genai" in engines:
            rows += [BenchRow(**row) for row in measure_direct(name, result, list(prompt_lengths), gen_tokens,
                                                                repeats, warmup)]
    return rows


def rows_for(report: dict, engine: str = "foundry-local") -> list[dict]:
    """The rows of a written ``bench.json`` report for one engine."""
    return [row for row in report["rows"] if row["engine"] == engine]


def engine_ratios(rows: list[BenchRow]) -> list[dict]:
    """Foundry Local's decode tokens/s over the direct engine's, per model and prompt length."""
    direct = {(r.model, r.target_prompt_tokens): r for r in rows if r.engine == "ort-genai"}
    return [{"model": r.model, "target_prompt_tokens": r.target_prompt_tokens, "foundry_decode_tps": r.decode_tps,
             "direct_decode_tps": direct[r.model, r.target_prompt_tokens].decode_tps,
             "ratio": round(r.decode_tps / direct[r.model, r.target_prompt_tokens].decode_tps, 3)}
            for r in rows if r.engine == "foundry-local" and (r.model, r.target_prompt_tokens) in direct
            and direct[r.model, r.target_prompt_tokens].decode_tps]


def write_results(rows: list[BenchRow], out_dir: str | os.PathLike[str]) -> dict:
    """Write ``bench.json`` (rows plus run metadata) and ``bench.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_metadata()
    meta["memory_bandwidth_gbs"] = round(memory_bandwidth_gbs(), 2)
    report = {"metadata": meta, "rows": [asdict(r) for r in rows], "engine_ratios": engine_ratios(rows),
              "noisy": [f"{r.model}/{r.engine}/{r.target_prompt_tokens}" for r in rows if r.noisy]}
    report["decode_ceiling"] = decode_ceiling(report["rows"], meta["memory_bandwidth_gbs"])
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    with (out / "bench.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(BenchRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return report


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    settings.apply_offline_env()
    result = measure_model(job["name"], job["prompt_lengths"], job["gen_tokens"], job["repeats"], job["warmup"],
                           job["cache"])
    print(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1])
