"""The engines a benchmark measures: Foundry Local in-process, ONNX Runtime GenAI directly, an OpenAI-compatible
endpoint; each model and engine in its own child process (:mod:`slmops.toolkit.stages.bench.worker`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from slmops.toolkit.core import settings, workers
from slmops.toolkit.core.artifacts import dir_size_mb, read_manifest
from slmops.toolkit.core.errors import InputError, ModelNotFoundError
from slmops.toolkit.core.measure import CpuMeter, peak_rss_mib, rss_mib
from slmops.toolkit.domain.params import DEFAULTS
from slmops.toolkit.domain.prompts import prompt_text
from slmops.toolkit.domain.quantize import lookup_only_mb
from slmops.toolkit.domain.results.bench import BenchRow, TimedRun, run_metrics
from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.foundry import LoadedModel, fixed_length_registration, models_root

#: The worker module the children run.
WORKER = "slmops.toolkit.stages.bench.worker"


def _row(model: dict, engine: str, length: int, gen: int, prompt_tokens: int, runs: list[dict], *, threads: int,
         load_s: float, load_rss_mib: float, peak_rss_mib: float, template_ms: float = 0.0) -> dict:
    """A :class:`BenchRow` (as a dict) from timed runs (each a :class:`TimedRun` as JSON), through :func:`run_metrics`.

    ``model`` holds ``name``, ``precision``, ``size_mb`` and ``weights_read_mb``.
    """
    figures = run_metrics([TimedRun.from_json(r) for r in runs], prompt_tokens)
    return BenchRow(
        model=model["name"], precision=model["precision"], engine=engine, target_prompt_tokens=length,
        prompt_tokens=prompt_tokens, target_gen_tokens=gen, threads=threads, peak_rss_mib=round(peak_rss_mib, 1),
        size_mb=model["size_mb"], weights_read_mb=model["weights_read_mb"], load_s=round(load_s, 3),
        load_rss_mib=round(load_rss_mib, 1), template_ms=round(template_ms, 3), **figures,
    ).to_json()


def configured_threads(folder: str | os.PathLike[str]) -> int:
    """The intra-op thread count a model folder's ``genai_config.json`` sets (0: the runtime's default)."""
    config = json.loads((Path(folder) / "genai_config.json").read_text())
    options = config["model"]["decoder"].get("session_options", {})
    return int(options.get("intra_op_num_threads", 0))


def measure_model(name: str, prompt_lengths: Sequence[int], gen_lengths: Sequence[int], repeats: int, warmup: int,
                  cache: str | None) -> dict:
    """Measure one model through Foundry Local in this process (the child's job).

    Returns:
        ``rows`` (dicts), ``prompts`` (the token ids each length became, for the direct engine),
        and the model's ``folder``, ``precision``, ``size_mb`` and ``threads``.
    """
    from tokenizers import Tokenizer

    folder = models_root(cache) / name.split(":")[0]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    size_mb = round(dir_size_mb(folder), 1)
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    info = {"name": name, "precision": read_manifest(folder).get("precision", "?"), "size_mb": size_mb,
            "weights_read_mb": round(size_mb - lookup_only_mb(folder / decoder), 1)}
    threads = configured_threads(folder)
    registrations = contextlib.ExitStack()  # the fixed-length copy: every request generates its asked tokens
    timing = registrations.enter_context(fixed_length_registration(name, cache))
    rss0, start = rss_mib(), time.perf_counter()
    model = LoadedModel(timing, cache)
    load_s, load_rss = time.perf_counter() - start, rss_mib() - rss0
    measured, prompts, texts, template_ms = [], [], [], {}
    meter = CpuMeter()
    try:
        # The template adds its own tokens (role markers, a default system prompt): measure
        # them once so prompts hit the asked length.
        overhead = max(0, model.prompt_tokens([{"role": "user", "content": prompt_text(tokenizer, 16)}]) - 16)
        for length in prompt_lengths:
            messages = [{"role": "user", "content": prompt_text(tokenizer, max(1, length - overhead))}]
            prompts.append(model.prompt_ids(messages))
            texts.append(messages)
            tokenizing = []
            for _ in range(5):  # the template and tokenizer cost, as the runtime pays it before prefill
                begin = time.perf_counter()
                model.prompt_ids(messages)
                tokenizing.append(time.perf_counter() - begin)
            template_ms[length] = min(tokenizing) * 1000
            for gen in gen_lengths:
                for _ in range(warmup):
                    model.generate(messages, max_tokens=gen)
                runs = []
                for _ in range(repeats):
                    meter.start()
                    g = model.generate(messages, max_tokens=gen)
                    runs.append(asdict(TimedRun(g.ttft_s, g.total_s, g.completion_tokens, g.prompt_tokens, g.harness_s,
                                                g.setup_s, **meter.stop())))
                measured.append((length, gen, runs))
    finally:
        model.close()
        registrations.close()
    peak = peak_rss_mib()
    return {"rows": [_row(info, "foundry-local", length, gen, runs[0]["prompt_tokens"], runs, threads=threads,
                          load_s=load_s, load_rss_mib=load_rss, peak_rss_mib=peak, template_ms=template_ms[length])
                     for length, gen, runs in measured],
            "prompts": prompts, "messages": texts, "folder": str(folder), "threads": threads, **info}


def measure_direct(job: dict, prompt_lengths: Sequence[int], gen_lengths: Sequence[int], repeats: int,
                   warmup: int, threads: int) -> list[dict]:
    """The same prompts (token ids) through ONNX Runtime GenAI directly, in its own child process.

    Args:
        job: What :func:`measure_model` returned for the model.
        threads: Intra-op threads for the session (0: the runtime's default).
    """
    result = genai.bench(job["folder"], job["prompts"], list(gen_lengths), repeats, warmup, threads)
    rows = []
    for length, ids, per_gen in zip(prompt_lengths, job["prompts"], result.runs, strict=True):
        for gen, runs in zip(gen_lengths, per_gen, strict=True):
            rows.append(_row(job, "ort-genai", length, gen, len(ids), [asdict(run) for run in runs], threads=threads,
                             load_s=result.load_s, load_rss_mib=result.load_rss_mib, peak_rss_mib=result.peak_rss_mib))
    return rows


def measure_endpoint(job: dict, url: str, api_key: str, gen_lengths: Sequence[int], repeats: int,
                     warmup: int) -> list[dict]:
    """The same prompts as Foundry Local in-process, streamed through an OpenAI-compatible endpoint.

    Runs the official ``openai`` client in this process (the bench's own child): time to first
    content chunk, decode speed over the runtime's token count (``usage``), greedy.

    Args:
        job: What :func:`measure_model` returned for the model (its prompts as messages).
        url: The endpoint's base URL (``http://host:port/v1``), serving ``job["name"]``.
        api_key: Its key (any text when it needs none).
    """
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=600)
    meter = CpuMeter()

    def once(messages: list[dict], gen: int) -> dict:
        start = time.perf_counter()
        first, usage, harness = None, None, 0.0
        stream = client.chat.completions.create(model=job["name"], messages=messages, max_tokens=gen, temperature=0,
                                                seed=0, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            arrived = time.perf_counter()
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = arrived
            usage = chunk.usage or usage
            harness += time.perf_counter() - arrived
        total = time.perf_counter() - start
        return asdict(TimedRun((first or total + start) - start, total, usage.completion_tokens, usage.prompt_tokens,
                               harness))

    rows = []
    for length, messages in zip(job["prompt_lengths"], job["messages"], strict=True):
        for gen in gen_lengths:
            for _ in range(warmup):
                once(messages, gen)
            runs = []
            for _ in range(repeats):
                meter.start()
                run = once(messages, gen)
                runs.append({**run, **meter.stop()})  # the CPU figures of the same TimedRun
            rows.append(_row(job, "endpoint", length, gen, runs[0]["prompt_tokens"], runs, threads=job["threads"],
                             load_s=0.0, load_rss_mib=0.0, peak_rss_mib=0.0))
    return rows


ENGINES = ("foundry-local", "ort-genai", "endpoint")


def bench(names: Sequence[str], *, prompt_lengths: Sequence[int] = tuple(DEFAULTS.prompt_lengths),
          gen_lengths: Sequence[int] = tuple(DEFAULTS.gen_lengths), repeats: int = DEFAULTS.repeats,
          warmup: int = DEFAULTS.warmup, threads: Sequence[int] | None = None, cache: str | Path | None = None,
          engines: Sequence[str] = ("foundry-local", "ort-genai"), endpoint: tuple[str, str] | None = None,
          progress: bool = True) -> list[BenchRow]:
    """Benchmark each registered model in fresh child processes, through each engine.

    Args:
        names: Registered model names.
        prompt_lengths: Prompt lengths in tokens (chat template included).
        gen_lengths: Tokens to generate per run; several make a generation-length sweep.
        repeats: Measured runs per figure, after ``warmup`` discarded ones.
        threads: Thread counts for the direct engine (a sweep when several). None: the same
            count Foundry Local uses, the model's registered ``threads`` (see
            ``slmops register --threads``). Foundry Local always runs with its registered count.
        engines: ``foundry-local``, ``ort-genai`` and/or ``endpoint``.
        endpoint: ``(base URL, API key)`` of an OpenAI-compatible endpoint serving ``names``
            (``slmops serve``), for the ``endpoint`` engine.

    Example:
        >>> rows = bench(["smollm2-fp32", "smollm2-int4"], gen_lengths=[32])
        >>> {r.engine for r in rows}
        {'foundry-local', 'ort-genai'}
    """
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0 or not prompt_lengths or not gen_lengths or min(gen_lengths) < 2 \
            or min(prompt_lengths) < 1:
        raise InputError("bench needs repeats >= 1, warmup >= 0, prompt lengths >= 1 and generation lengths >= 2.")
    if threads is not None and (not threads or min(threads) < 1):
        raise InputError("Thread counts must be whole numbers >= 1; leave them out to use the model's own.")
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        raise InputError(f"Unknown engines {sorted(unknown)}; choose from {list(ENGINES)}.")
    if "endpoint" in engines and endpoint is None:
        raise InputError("The endpoint engine needs a running endpoint: `slmops bench --engines endpoint` starts one.")
    registered = sorted(p.name for p in models_root(cache).glob("*") if (p / "genai_config.json").is_file())
    for name in names:  # before any child starts: a typo is the user's, not a crash
        if name.split(":")[0] not in registered:
            raise ModelNotFoundError(name, registered)
    cache_arg = str(settings.cache_dir(cache))
    rows: list[BenchRow] = []
    for name in tqdm(names, desc="bench", unit="model", disable=not progress):
        job = {"name": name, "prompt_lengths": list(prompt_lengths), "gen_lengths": list(gen_lengths),
               "repeats": repeats, "warmup": warmup, "cache": cache_arg}
        result = workers.run_worker(WORKER, "measure", job, name=f"benchmark of {name}").result
        if "foundry-local" in engines:
            rows += [BenchRow(**row) for row in result["rows"]]
        if "endpoint" in engines:
            client_job = {**result, "prompt_lengths": list(prompt_lengths), "url": endpoint[0], "key": endpoint[1],
                          "gen_lengths": list(gen_lengths), "repeats": repeats, "warmup": warmup}
            rows += [BenchRow(**row) for row in workers.run_worker(
                WORKER, "endpoint", client_job, name=f"endpoint benchmark of {name}").result]
        if "ort-genai" in engines:
            for count in threads or [result["threads"]]:
                rows += [BenchRow(**row) for row in measure_direct(result, prompt_lengths, gen_lengths, repeats,
                                                                    warmup, count)]
    return rows
