"""The engines a benchmark measures: Foundry Local in-process, ONNX Runtime GenAI directly, an OpenAI-compatible
endpoint; each model and engine in its own child process (:mod:`slmops.toolkit.stages.bench.worker`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from slmops.toolkit.core import codec, settings, workers
from slmops.toolkit.core.artifacts import dir_size_mb
from slmops.toolkit.core.errors import InputError, ModelNotFoundError
from slmops.toolkit.core.measure import CpuMeter, peak_rss_mib, rss_mib
from slmops.toolkit.domain.prompts import prompt_text
from slmops.toolkit.domain.results.bench import BenchRow, TimedRun, run_metrics
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.run_params import DEFAULTS
from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.foundry import LoadedModel, fixed_length_registration
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.weights.weight_summary import lookup_only_mb

#: The worker module the children run.
WORKER = "slmops.toolkit.stages.bench.worker"


@dataclass(frozen=True)
class ModelFacts:
    """What every row of a benchmarked model says about the model itself.

    Attributes:
        name: Registered name.
        precision: The build's precision (from its manifest).
        size_mb: The model folder on disk, MB (10^6 bytes).
        weights_read_mb: Weights read to decode one token, MB (10^6 bytes; see :class:`BenchRow`).
    """

    name: str
    precision: str
    size_mb: float
    weights_read_mb: float


@dataclass(frozen=True)
class MeasureJob:
    """What the Foundry Local child is asked (the ``measure`` task's payload).

    Attributes:
        name: The registered model.
        prompt_lengths: Prompt lengths in tokens (chat template included).
        gen_lengths: Tokens to generate after each prompt, each length in turn.
        repeats: Timed runs per prompt and length.
        warmup: Untimed runs before them.
        cache: The Foundry Local cache folder.
    """

    name: str
    prompt_lengths: tuple[int, ...]
    gen_lengths: tuple[int, ...]
    repeats: int
    warmup: int
    cache: str


@dataclass(frozen=True)
class MeasuredModel:
    """What the Foundry Local child measured of one model (the ``measure`` task's result).

    Attributes:
        model: The model's facts, as its rows carry them.
        folder: The registered model's folder.
        threads: The intra-op threads its ``genai_config.json`` sets (0: the runtime's default).
        prompts: Each prompt length's prompt as the token ids it became (for the direct engine).
        messages: Each prompt length's prompt as chat messages (for the endpoint engine).
        rows: Foundry Local's rows, one per prompt and generation length.
    """

    model: ModelFacts
    folder: str
    threads: int
    prompts: tuple[tuple[int, ...], ...]
    messages: tuple[tuple[dict[str, str], ...], ...]
    rows: tuple[BenchRow, ...]


@dataclass(frozen=True)
class EndpointJob:
    """What the endpoint client's child is asked (the ``endpoint`` task's payload; its result is rows).

    Attributes:
        model: The model's facts, as its rows carry them (``model.name`` is the name the endpoint serves).
        threads: The intra-op threads the model is registered with, recorded in its rows.
        prompt_lengths: The asked prompt length of each of ``messages``.
        messages: Each prompt as chat messages (what Foundry Local in-process was given).
        url: The endpoint's base URL (``http://host:port/v1``).
        key: Its API key (any text when it needs none).
        gen_lengths: Tokens to generate after each prompt, each length in turn.
        repeats: Timed runs per prompt and length.
        warmup: Untimed runs before them.
    """

    model: ModelFacts
    threads: int
    prompt_lengths: tuple[int, ...]
    messages: tuple[tuple[dict[str, str], ...], ...]
    url: str
    key: str
    gen_lengths: tuple[int, ...]
    repeats: int
    warmup: int


def _row(model: ModelFacts, engine: str, length: int, gen: int, prompt_tokens: int, runs: Sequence[TimedRun], *,
         threads: int, load_s: float, load_rss_mib: float, peak_rss_mib: float, template_ms: float = 0.0) -> BenchRow:
    """A :class:`BenchRow` from timed runs, through :func:`run_metrics`."""
    figures = run_metrics(list(runs), prompt_tokens)
    return BenchRow(
        model=model.name, precision=model.precision, engine=engine, target_prompt_tokens=length,
        prompt_tokens=prompt_tokens, target_gen_tokens=gen, threads=threads, peak_rss_mib=round(peak_rss_mib, 1),
        size_mb=model.size_mb, weights_read_mb=model.weights_read_mb, load_s=round(load_s, 3),
        load_rss_mib=round(load_rss_mib, 1), template_ms=round(template_ms, 3), **figures,
    )


def configured_threads(folder: str | os.PathLike[str]) -> int:
    """The intra-op thread count a model folder's ``genai_config.json`` sets (0: the runtime's default)."""
    config = json.loads((Path(folder) / "genai_config.json").read_text())
    options = config["model"]["decoder"].get("session_options", {})
    return int(options.get("intra_op_num_threads", 0))


def measure_model(name: str, prompt_lengths: Sequence[int], gen_lengths: Sequence[int], repeats: int, warmup: int,
                  cache: str | None) -> MeasuredModel:
    """Measure one model through Foundry Local in this process (the child's job).

    Returns:
        Its rows, the prompts (the token ids and messages each length became, for the other
        engines), and the model's facts, ``folder`` and ``threads``.
    """
    from tokenizers import Tokenizer

    folder = models_root(cache) / name.split(":")[0]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    size_mb = round(dir_size_mb(folder), 1)
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    made = read_manifest(folder)
    info = ModelFacts(name, (made.precision if made else "") or "?", size_mb,
                      round(size_mb - lookup_only_mb(folder / decoder), 1))
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
            prompts.append(tuple(model.prompt_ids(messages)))
            texts.append(tuple(messages))
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
                    runs.append(TimedRun(g.ttft_s, g.total_s, g.completion_tokens, g.prompt_tokens, g.harness_s,
                                         g.setup_s, **asdict(meter.stop())))
                measured.append((length, gen, runs))
    finally:
        model.close()
        registrations.close()
    peak = peak_rss_mib()
    rows = tuple(_row(info, "foundry-local", length, gen, runs[0].prompt_tokens, runs, threads=threads, load_s=load_s,
                      load_rss_mib=load_rss, peak_rss_mib=peak, template_ms=template_ms[length])
                 for length, gen, runs in measured)
    return MeasuredModel(info, str(folder), threads, tuple(prompts), tuple(texts), rows)


def measure_direct(measured: MeasuredModel, prompt_lengths: Sequence[int], gen_lengths: Sequence[int], repeats: int,
                   warmup: int, threads: int) -> list[BenchRow]:
    """The same prompts (token ids) through ONNX Runtime GenAI directly, in its own child process.

    Args:
        measured: What :func:`measure_model` returned for the model.
        threads: Intra-op threads for the session (0: the runtime's default).
    """
    result = genai.bench(measured.folder, [list(ids) for ids in measured.prompts], list(gen_lengths), repeats, warmup,
                         threads)
    rows = []
    for length, ids, per_gen in zip(prompt_lengths, measured.prompts, result.runs, strict=True):
        for gen, runs in zip(gen_lengths, per_gen, strict=True):
            rows.append(_row(measured.model, "ort-genai", length, gen, len(ids), runs, threads=threads,
                             load_s=result.load_s, load_rss_mib=result.load_rss_mib, peak_rss_mib=result.peak_rss_mib))
    return rows


def measure_endpoint(job: EndpointJob) -> list[BenchRow]:
    """The same prompts as Foundry Local in-process, streamed through an OpenAI-compatible endpoint.

    Runs the official ``openai`` client in this process (the bench's own child): time to first
    content chunk, decode speed over the runtime's token count (``usage``), greedy.

    Args:
        job: The model (served by the endpoint as ``job.model.name``), its prompts as messages
            (what :func:`measure_model` returned), and the endpoint's URL and key.
    """
    import openai

    client = openai.OpenAI(base_url=job.url, api_key=job.key, max_retries=0, timeout=600)
    meter = CpuMeter()

    def once(messages: list[dict], gen: int) -> TimedRun:
        start = time.perf_counter()
        first, usage, harness = None, None, 0.0
        stream = client.chat.completions.create(model=job.model.name, messages=messages, max_tokens=gen,
                                                temperature=0, seed=0, stream=True,
                                                stream_options={"include_usage": True})
        for chunk in stream:
            arrived = time.perf_counter()
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = arrived
            usage = chunk.usage or usage
            harness += time.perf_counter() - arrived
        total = time.perf_counter() - start
        return TimedRun((first or total + start) - start, total, usage.completion_tokens, usage.prompt_tokens, harness)

    rows = []
    for length, messages in zip(job.prompt_lengths, job.messages, strict=True):
        for gen in job.gen_lengths:
            for _ in range(job.warmup):
                once(list(messages), gen)
            runs = []
            for _ in range(job.repeats):
                meter.start()
                run = once(list(messages), gen)
                runs.append(replace(run, **asdict(meter.stop())))  # the CPU figures of the same run
            rows.append(_row(job.model, "endpoint", length, gen, runs[0].prompt_tokens, runs, threads=job.threads,
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
        job = MeasureJob(name, tuple(prompt_lengths), tuple(gen_lengths), repeats, warmup, cache_arg)
        measured = codec.load(MeasuredModel,
                              workers.run_worker(WORKER, "measure", codec.dump(job), name=f"benchmark of {name}").result)
        if "foundry-local" in engines:
            rows += measured.rows
        if "endpoint" in engines:
            client_job = EndpointJob(measured.model, measured.threads, tuple(prompt_lengths), measured.messages,
                                     endpoint[0], endpoint[1], tuple(gen_lengths), repeats, warmup)
            rows += codec.load(list[BenchRow], workers.run_worker(
                WORKER, "endpoint", codec.dump(client_job), name=f"endpoint benchmark of {name}").result)
        if "ort-genai" in engines:
            for count in threads or [measured.threads]:
                rows += measure_direct(measured, prompt_lengths, gen_lengths, repeats, warmup, count)
    return rows
