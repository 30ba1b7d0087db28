"""Stage 4: benchmark registered models through Foundry Local.

Each model is measured in its own child process (``python -m toolkit.bench``), so its
peak RSS is the process's own and models do not share memory. Prompts of the asked
token lengths are cut from one fixed text with the model's tokenizer; decoding is
greedy; warm-up runs are discarded.
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
    e2e_ms: float
    peak_rss_mb: float
    cpu_percent: float
    size_mb: float
    load_s: float
    repeats: int


def _prompt_of(tokenizer, content_tokens: int) -> str:
    """The repeated filler cut to its first ``content_tokens`` tokens."""
    text = _FILLER
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    while len(ids) < content_tokens:
        text += _FILLER
        ids = tokenizer.encode(text, add_special_tokens=False).ids
    return tokenizer.decode(ids[:content_tokens])


def measure_model(name: str, prompt_lengths: list[int], gen_tokens: int, repeats: int, warmup: int,
                  cache: str | None) -> list[dict]:
    """Measure one model in this process (the child's job); returns row dicts."""
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
    rows = []
    try:
        # The template adds its own tokens (role markers, a default system prompt): measure
        # them once so prompts hit the asked length.
        probe = model.generate([{"role": "user", "content": _prompt_of(tokenizer, 4)}], max_tokens=1)
        overhead = max(0, probe.prompt_tokens - 4)
        for length in prompt_lengths:
            prompt = _prompt_of(tokenizer, max(1, length - overhead))
            messages = [{"role": "user", "content": prompt}]
            for _ in range(warmup):
                model.generate(messages, max_tokens=gen_tokens)
            runs = []
            for _ in range(repeats):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                generation = model.generate(messages, max_tokens=gen_tokens)
                cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0) * 100
                runs.append((generation, cpu))
            gens = [g for g, _ in runs]
            ttfts = [g.ttft_s * 1000 for g in gens]
            decodes = [g.decode_tps for g in gens]
            rows.append(asdict(BenchRow(
                model=name, precision=precision, engine="foundry-local",
                target_prompt_tokens=length, prompt_tokens=gens[0].prompt_tokens,
                gen_tokens=statistics.mean(g.completion_tokens for g in gens),
                ttft_ms=round(statistics.mean(ttfts), 2),
                ttft_ms_sd=round(statistics.stdev(ttfts), 2) if len(ttfts) > 1 else 0.0,
                prefill_tps=round(gens[0].prompt_tokens / (statistics.mean(ttfts) / 1000), 1),
                decode_tps=round(statistics.mean(decodes), 2),
                decode_tps_sd=round(statistics.stdev(decodes), 2) if len(decodes) > 1 else 0.0,
                e2e_ms=round(statistics.mean(g.total_s for g in gens) * 1000, 2),
                peak_rss_mb=0.0, cpu_percent=round(statistics.mean(c for _, c in runs), 1),
                size_mb=size_mb, load_s=round(load_s, 3), repeats=repeats,
            )))
    finally:
        model.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for row in rows:
        row["peak_rss_mb"] = round(peak, 1)
    return rows


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


def bench(names: list[str], *, prompt_lengths: list[int] = (16, 128), gen_tokens: int = 32, repeats: int = 3,
          warmup: int = 1, cache: str | Path | None = None, progress: bool = True) -> list[BenchRow]:
    """Benchmark each registered model in a fresh child process.

    Example:
        >>> rows = bench(["smollm2-fp32", "smollm2-int4"], gen_tokens=32)
        >>> rows[0].decode_tps > 0
        True
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0 or gen_tokens < 1 or not prompt_lengths:
        raise SlmopsError("bench needs repeats >= 1, warmup >= 0, gen_tokens >= 1 and at least one prompt length.")
    cache_arg = str(settings.cache_dir(cache))
    rows: list[BenchRow] = []
    for name in tqdm(names, desc="bench", unit="model", disable=not progress):
        job = json.dumps({"name": name, "prompt_lengths": list(prompt_lengths), "gen_tokens": gen_tokens,
                          "repeats": repeats, "warmup": warmup, "cache": cache_arg})
        env = {**os.environ, **settings.OFFLINE_ENV}
        done = subprocess.run([sys.executable, "-m", "toolkit.bench", job], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SlmopsError(f"Benchmarking {name} failed:\n{done.stderr[-2000:]}")
        rows += [BenchRow(**row) for row in json.loads(done.stdout.strip().splitlines()[-1])]
    return rows


def write_results(rows: list[BenchRow], out_dir: str | os.PathLike[str]) -> dict:
    """Write ``bench.json`` (rows plus run metadata) and ``bench.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_metadata()
    report = {"metadata": meta, "rows": [asdict(r) for r in rows]}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    with (out / "bench.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(BenchRow)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return report


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    settings.apply_offline_env()
    rows = measure_model(job["name"], job["prompt_lengths"], job["gen_tokens"], job["repeats"], job["warmup"],
                         job["cache"])
    print(json.dumps(rows))


if __name__ == "__main__":
    _worker(sys.argv[1])
