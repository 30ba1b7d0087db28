"""Stage 4: benchmark registered models through Foundry Local and ONNX Runtime GenAI directly.

Each model and engine is measured in its own child process, so its peak RSS is the
process's own and models do not share memory. Prompts of the asked token lengths are cut
from one fixed text with the model's tokenizer; both engines get the same token ids (the
chat template applied once, as Foundry's ChatSession does); decoding is greedy; warm-up
runs are discarded. The direct engine generates exactly the asked number of tokens (EOS
ignored, the method of ONNX Runtime GenAI's ``benchmark_e2e.py``) with a fixed, recorded
thread count. Foundry Local's request options have no minimum length, so its rows run on the
model's fixed-length registration (:func:`~toolkit.runtimes.foundry.fixed_length_registration`:
the same files and runtime, ``search.min_length`` set to the context so the end of turn is held
back): a terse fine-tune generates the asked tokens too, and decode and first-token figures and
their ratios to the direct engine are measured for every precision. Rows record how many tokens
were generated (``short`` in ``bench.json`` lists any that stopped early).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from toolkit.core import artifacts, platform, settings, workers
from toolkit.core.artifacts import dir_size_mb, read_manifest
from toolkit.core.errors import InputError, ModelNotFoundError
from toolkit.core.measure import CpuMeter, machine, peak_rss_mb, rss_mb, run_metadata
from toolkit.domain.params import DEFAULTS
from toolkit.domain.prompts import prompt_text
from toolkit.domain.quantize import lookup_only_mb
from toolkit.domain.results.checklist import ChecklistReport
from toolkit.runtimes import genai
from toolkit.runtimes.foundry import LoadedModel, fixed_length_registration, models_root


@dataclass(frozen=True)
class BenchRow:
    """One benchmark figure set: one model, engine, prompt length, generation length and thread count.

    Fields are ``bench.json``'s row (see the README). Means over ``repeats`` measured runs, with
    spread where it matters.

    Attributes:
        target_prompt_tokens: The asked prompt length; ``prompt_tokens`` is what the runtime counted.
        target_gen_tokens: The asked generation length; ``gen_tokens`` the mean generated.
        threads: ONNX Runtime's intra-op threads as configured (0: the runtime's default).
        cpu_percent: The benchmarked process's CPU time over wall time (100 = one core busy).
        system_cpu_percent: All CPUs' busy time over the same runs (100 = the whole machine busy).
        harness_overhead_pct: Time spent in this toolkit's own code between tokens, as a
            percentage of decode time.
        load_s, load_rss_mb: Model load time and the process memory the load added.
        setup_ms: Of the time to first token, opening the runtime's session and request (Foundry Local).
        template_ms: Rendering the chat template and tokenizing the prompt, timed with the
            toolkit's own tokenizer: what the runtime does for that, estimated (Foundry Local;
            the direct engine is given token ids).
        weights_read_mb: Weights read to decode one token: size on disk less tables only
            looked up by row (an embedding table not shared with the LM head).
    """

    model: str
    precision: str
    engine: str
    target_prompt_tokens: int
    prompt_tokens: int
    target_gen_tokens: int
    gen_tokens: float
    threads: int
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
    e2e_ms_sd: float
    peak_rss_mb: float
    cpu_percent: float
    system_cpu_percent: float
    harness_overhead_pct: float
    size_mb: float
    weights_read_mb: float
    load_s: float
    load_rss_mb: float
    repeats: int
    setup_ms: float = 0.0
    template_ms: float = 0.0


#: Coefficient of variation of decode tokens/s above which a figure is flagged as too noisy to trust.
NOISY_CV = 0.10


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _row(model: dict, engine: str, length: int, gen: int, prompt_tokens: int, runs: list[dict], *, threads: int,
         load_s: float, load_rss_mb: float, peak_rss_mb: float, template_ms: float = 0.0) -> dict:
    """A :class:`BenchRow` (as a dict) from timed runs.

    Each run holds ``ttft_s``, ``total_s``, ``gen_tokens``, ``harness_s``, ``cpu_percent`` and
    ``system_cpu_percent``; ``model`` holds ``name``, ``precision``, ``size_mb`` and ``weights_read_mb``.
    """
    ttfts = [r["ttft_s"] * 1000 for r in runs]
    decode_s = [r["total_s"] - r["ttft_s"] for r in runs]
    decodes = [(r["gen_tokens"] - 1) / d for r, d in zip(runs, decode_s, strict=True)
               if r["gen_tokens"] > 1 and d > 0] or [0.0]
    mean = statistics.mean(decodes)
    ordered = sorted(decodes)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    cv = _sd(decodes) / mean if mean else 0.0
    e2e = [r["total_s"] * 1000 for r in runs]
    overhead = [r["harness_s"] / d * 100 for r, d in zip(runs, decode_s, strict=True) if d > 0] or [0.0]
    return asdict(BenchRow(
        model=model["name"], precision=model["precision"], engine=engine, target_prompt_tokens=length,
        prompt_tokens=prompt_tokens, target_gen_tokens=gen, gen_tokens=statistics.mean(r["gen_tokens"] for r in runs),
        threads=threads, ttft_ms=round(statistics.mean(ttfts), 2), ttft_ms_sd=round(_sd(ttfts), 2),
        prefill_tps=round(prompt_tokens / (statistics.mean(ttfts) / 1000), 1),
        decode_tps=round(mean, 2), decode_tps_sd=round(_sd(decodes), 2), decode_tps_p50=round(pick(0.5), 2),
        decode_tps_p90=round(pick(0.9), 2), decode_cv=round(cv, 4), noisy=cv > NOISY_CV,
        e2e_ms=round(statistics.mean(e2e), 2), e2e_ms_sd=round(_sd(e2e), 2), peak_rss_mb=round(peak_rss_mb, 1),
        cpu_percent=round(statistics.mean(r["cpu_percent"] for r in runs), 1),
        system_cpu_percent=round(statistics.mean(r["system_cpu_percent"] for r in runs), 1),
        harness_overhead_pct=round(statistics.mean(overhead), 4), size_mb=model["size_mb"],
        weights_read_mb=model["weights_read_mb"], load_s=round(load_s, 3),
        load_rss_mb=round(load_rss_mb, 1), repeats=len(runs),
        setup_ms=round(statistics.mean(r.get("setup_s", 0.0) for r in runs) * 1000, 3),
        template_ms=round(template_ms, 3),
    ))


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
    rss0, start = rss_mb(), time.perf_counter()
    model = LoadedModel(timing, cache)
    load_s, load_rss = time.perf_counter() - start, rss_mb() - rss0
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
                    runs.append({"ttft_s": g.ttft_s, "total_s": g.total_s, "gen_tokens": g.completion_tokens,
                                 "harness_s": g.harness_s, "prompt_tokens": g.prompt_tokens, "setup_s": g.setup_s,
                                 **meter.stop()})
                measured.append((length, gen, runs))
    finally:
        model.close()
        registrations.close()
    peak = peak_rss_mb()
    return {"rows": [_row(info, "foundry-local", length, gen, runs[0]["prompt_tokens"], runs, threads=threads,
                          load_s=load_s, load_rss_mb=load_rss, peak_rss_mb=peak, template_ms=template_ms[length])
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
    for length, ids, per_gen in zip(prompt_lengths, job["prompts"], result["runs"], strict=True):
        for gen, runs in zip(gen_lengths, per_gen, strict=True):
            rows.append(_row(job, "ort-genai", length, gen, len(ids), runs, threads=threads, load_s=result["load_s"],
                             load_rss_mb=result["load_rss_mb"], peak_rss_mb=result["peak_rss_mb"]))
    return rows


def decode_ceiling(rows: list[dict], bandwidth_gbs: float | dict[int, float], llc_mb: float = 0.0) -> list[dict]:
    """Each row's decode speed against the bandwidth bound: every token reads the weights once.

    The bound is bandwidth / ``weights_read_mb`` (size on disk less tables only looked up by
    row); real decode also reads the KV cache and spends time computing, so 100% is out of
    reach, and the gap says how far. A row above 100% gets its likely reason; a row that
    generated too few tokens to time decode (:func:`timed_too_few`) is left out.

    Args:
        rows: ``bench.json`` rows.
        bandwidth_gbs: Read bandwidth in GB/s, one figure or one per thread count (the row's
            ``threads``; 0 is the runtime's default).
        llc_mb: The last-level cache in MB: weights that fit in it are not read from memory.
    """
    out = []
    for row in rows:
        if timed_too_few(row):
            continue  # a few tokens do not time decode
        read_mb = row.get("weights_read_mb", row["size_mb"])
        threads = row.get("threads", 0)
        gbs = bandwidth_gbs.get(threads, max(bandwidth_gbs.values(), default=0.0)) \
            if isinstance(bandwidth_gbs, dict) else bandwidth_gbs
        ceiling = gbs * 1e9 / (read_mb * 1e6) if read_mb else 0.0
        percent = round(100 * row["decode_tps"] / ceiling, 1) if ceiling else 0.0
        reason = ""
        if percent > 100:
            reason = (f"the weights read per token ({read_mb:.0f} MB) fit in the {llc_mb:.0f} MB last-level cache"
                      if read_mb <= llc_mb else "faster than the measured read bandwidth allows: the probe "
                      "under-measured this machine's bandwidth (rerun on a quieter machine)")
        out.append({"model": row["model"], "engine": row["engine"], "target_prompt_tokens": row["target_prompt_tokens"],
                    "target_gen_tokens": row.get("target_gen_tokens", 0), "threads": threads,
                    "weights_read_mb": read_mb, "bandwidth_gbs": round(gbs, 2), "decode_tps": row["decode_tps"],
                    "ceiling_tps": round(ceiling, 1), "percent_of_ceiling": percent, "above_bound_because": reason})
    return out


def last_level_cache_mb(caches: dict[str, str]) -> float:
    """The largest cache in MB from :func:`toolkit.core.measure.machine`'s ``caches`` (``{"L3": "32768K"}``)."""
    sizes = []
    for size in caches.values():
        number = size.rstrip("KMG")
        if number.isdigit():
            sizes.append(int(number) * {"K": 1 / 1024, "M": 1, "G": 1024}.get(size[-1:], 1 / 1024 / 1024))
    return max(sizes, default=0.0)


def timed_too_few(row: dict | BenchRow) -> bool:
    """True when a row generated under half its asked tokens: too few to time decode by.

    Foundry Local has no minimum length, and a terse fine-tune (the demo's answers in a few
    tokens) stops early whatever the prompt asks; its decode speed is then the direct
    engine's row of the same model and prompt, which generates exactly the asked tokens.
    """
    get = row.get if isinstance(row, dict) else lambda key, default=None: getattr(row, key, default)
    return get("gen_tokens", 0) < get("target_gen_tokens", 0) / 2


def headline_rows(rows: list[dict], engine: str = "foundry-local") -> list[dict]:
    """One row per model for headline figures: ``engine``, the shortest prompt, the first generation length.

    A row that generated too few tokens to time decode (:func:`timed_too_few`) takes its decode
    speed from the direct engine's row of the same model, prompt and length, and says so in
    ``decode_from``.
    """
    direct = {(r["model"], r["target_prompt_tokens"], r.get("target_gen_tokens")): r for r in rows
              if r["engine"] == "ort-genai"}
    rows = [r for r in rows if r["engine"] == engine]
    if not rows:
        return []
    shortest = min(r["target_prompt_tokens"] for r in rows)
    picked: dict[str, dict] = {}
    for row in rows:
        if row["target_prompt_tokens"] == shortest and row["model"] not in picked:
            other = direct.get((row["model"], row["target_prompt_tokens"], row.get("target_gen_tokens")))
            if timed_too_few(row) and other is not None:
                row = {**row, "decode_tps": other["decode_tps"], "decode_from": "ort-genai"}
            picked[row["model"]] = row
    return list(picked.values())


def summary(report: dict, quality: ChecklistReport | None = None, *, baseline: str = "fp32") -> list[str]:
    """One sentence per precision against the baseline precision (Foundry Local rows, shortest prompt).

    Args:
        report: A written ``bench.json``.
        quality: The checklist's result (``test.json``), for top-1 agreement when present.

    Example:
        >>> summary(report)[0]
        'int4: 3.3x fp32 decode speed at 0.37x size'
    """
    by_precision = {r["precision"]: r for r in headline_rows(report["rows"])}
    base = by_precision.get(baseline)
    top1 = quality.top1_agreement() if quality is not None else {}
    sentences = []
    for precision, row in by_precision.items():
        if base is None or precision == baseline or not base["decode_tps"]:
            continue
        text = (f"{precision}: {row['decode_tps'] / base['decode_tps']:.1f}x {baseline} decode speed at "
                f"{row['size_mb'] / base['size_mb']:.2f}x size")
        if row["model"] in top1:
            text += f", top-1 agreement {top1[row['model']]:.3f}"
        sentences.append(text)
    return sentences


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
        return {"ttft_s": (first or total + start) - start, "total_s": total, "gen_tokens": usage.completion_tokens,
                "prompt_tokens": usage.prompt_tokens, "harness_s": harness}

    rows = []
    for length, messages in zip(job["prompt_lengths"], job["messages"], strict=True):
        for gen in gen_lengths:
            for _ in range(warmup):
                once(messages, gen)
            runs = []
            for _ in range(repeats):
                meter.start()
                run = once(messages, gen)
                runs.append({**run, **meter.stop()})
            rows.append(_row(job, "endpoint", length, gen, runs[0]["prompt_tokens"], runs, threads=job["threads"],
                             load_s=0.0, load_rss_mb=0.0, peak_rss_mb=0.0))
    return rows


def ttft_breakdown(rows: Sequence[BenchRow]) -> list[dict]:
    """Foundry Local's time to first token, line by line, against the direct engine's on the same prompt ids.

    ``setup_ms`` and ``template_ms`` are measured (see :class:`BenchRow`) and ``harness_ms`` is
    the harness's own share (parsing the first chunk). ``prefill_ms`` is the direct engine's
    own time to first token (the prompt pass and the first token, from token ids) and
    ``runtime_other_ms`` what remains of Foundry Local's figure: its request handling and
    queueing. The parts always add up to ``foundry_ttft_ms``. The direct engine is another
    ONNX Runtime GenAI build (the toolkit's, where Foundry Local ships its own), so Foundry's
    prefill can be the faster one; the remainder would then be negative. In that case the
    prefill inside Foundry Local and its other handling cannot be told apart: ``prefill_ms``
    holds both together, ``runtime_other_ms`` is None and ``unmeasured`` says so.
    """
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads): r for r in rows
              if r.engine == "ort-genai"}
    out = []
    for r in rows:
        other = direct.get((r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads))
        if r.engine != "foundry-local" or other is None or not other.ttft_ms:
            continue
        harness = round(r.harness_overhead_pct / 100 * (r.e2e_ms - r.ttft_ms) / max(r.gen_tokens, 1), 3)
        measured = r.setup_ms + r.template_ms + harness
        remainder = round(r.ttft_ms - measured - other.ttft_ms, 2)
        line = {"model": r.model, "target_prompt_tokens": r.target_prompt_tokens, "threads": r.threads,
                "foundry_ttft_ms": r.ttft_ms, "direct_ttft_ms": other.ttft_ms,
                "ratio": round(r.ttft_ms / other.ttft_ms, 3), "setup_ms": r.setup_ms,
                "template_ms": r.template_ms, "prefill_ms": other.ttft_ms, "harness_ms": harness,
                "runtime_other_ms": remainder, "unmeasured": ""}
        if remainder < 0:
            line.update(prefill_ms=round(r.ttft_ms - measured, 2), runtime_other_ms=None,
                        unmeasured=(f"Foundry Local's prefill is {-remainder:.0f} ms faster than the direct engine's "
                                    f"({other.ttft_ms:.0f} ms): its prefill and its request handling are given "
                                    "together, they cannot be measured apart"))
        out.append(line)
    return out


def endpoint_ratios(rows: Sequence[BenchRow]) -> list[dict]:
    """The endpoint against Foundry Local in-process at the same lengths: decode ratio and first-token overhead."""
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens): r for r in rows if r.engine == "foundry-local"}
    out = []
    for r in rows:
        base = direct.get((r.model, r.target_prompt_tokens, r.target_gen_tokens))
        if r.engine == "endpoint" and base is not None and base.decode_tps and not timed_too_few(r):
            out.append({"model": r.model, "target_prompt_tokens": r.target_prompt_tokens,
                        "target_gen_tokens": r.target_gen_tokens, "in_process_decode_tps": base.decode_tps,
                        "endpoint_decode_tps": r.decode_tps, "decode_ratio": round(r.decode_tps / base.decode_tps, 3),
                        "in_process_ttft_ms": base.ttft_ms, "endpoint_ttft_ms": r.ttft_ms,
                        "ttft_overhead_ms": round(r.ttft_ms - base.ttft_ms, 2)})
    return out


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
        result = workers.run_worker("toolkit.stages.bench", "measure", job, name=f"benchmark of {name}").result
        if "foundry-local" in engines:
            rows += [BenchRow(**row) for row in result["rows"]]
        if "endpoint" in engines:
            client_job = {**result, "prompt_lengths": list(prompt_lengths), "url": endpoint[0], "key": endpoint[1],
                          "gen_lengths": list(gen_lengths), "repeats": repeats, "warmup": warmup}
            rows += [BenchRow(**row) for row in workers.run_worker(
                "toolkit.stages.bench", "endpoint", client_job, name=f"endpoint benchmark of {name}").result]
        if "ort-genai" in engines:
            for count in threads or [result["threads"]]:
                rows += [BenchRow(**row) for row in measure_direct(result, prompt_lengths, gen_lengths, repeats,
                                                                    warmup, count)]
    return rows


def rows_for(report: dict, engine: str = "foundry-local") -> list[dict]:
    """The rows of a written ``bench.json`` report for one engine."""
    return [row for row in report["rows"] if row["engine"] == engine]


def engine_ratios(rows: Sequence[BenchRow]) -> list[dict]:
    """Foundry Local's decode tokens/s over the direct engine's at the same lengths and thread count."""
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads): r for r in rows
              if r.engine == "ort-genai"}
    out = []
    for r in rows:
        other = direct.get((r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads))
        if r.engine == "foundry-local" and other is not None and other.decode_tps and not timed_too_few(r):
            out.append({"model": r.model, "target_prompt_tokens": r.target_prompt_tokens,
                        "target_gen_tokens": r.target_gen_tokens, "threads": r.threads,
                        "foundry_decode_tps": r.decode_tps, "direct_decode_tps": other.decode_tps,
                        "ratio": round(r.decode_tps / other.decode_tps, 3)})
    return out


def warnings(rows: Sequence[BenchRow]) -> list[str]:
    """What makes figures less trustworthy, one sentence per cause naming every row it touches.

    Causes: decode that varies between runs, generations that stopped early, visible harness cost.
    """
    def where(r: BenchRow) -> str:
        return f"{r.model} {r.engine} {r.target_prompt_tokens}/{r.target_gen_tokens}/{r.threads}"

    def listed(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")

    noisy = [f"{where(r)} ({r.decode_cv:.0%})" for r in rows if r.noisy]
    short = [f"{where(r)} ({r.gen_tokens:.1f} of {r.target_gen_tokens})" for r in rows
             if r.gen_tokens < r.target_gen_tokens]
    harness = [f"{where(r)} ({r.harness_overhead_pct:.1f}%)" for r in rows if r.harness_overhead_pct >= 1]
    out = []
    if noisy:
        out.append(f"Decode varies over {NOISY_CV:.0%} between runs in {len(noisy)} rows (model engine "
                   f"prompt/gen/threads: {listed(noisy)}); rerun with more --repeats on a quieter machine.")
    if short:
        out.append(f"{len(short)} rows stopped before their asked tokens ({listed(short)}); their decode tokens/s "
                   "is over the tokens they did generate.")
    if harness:
        out.append(f"The harness took 1% or more of decode time in {len(harness)} rows ({listed(harness)}).")
    return out


def instruction_sets() -> dict[str, bool]:
    """The CPU's vector extensions that decide ONNX Runtime's quantized kernels (the CPU's flags).

    Without AVX-512 (or AVX-VNNI), INT8 and INT4 MatMuls have no fast integer dot product, so a
    quantized model's prefill (compute-bound) can be slower than FP32's while its decode
    (bandwidth-bound) is faster.
    """
    flags = platform.cpu_flags()
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}


def write_results(rows: Sequence[BenchRow], out_dir: str | os.PathLike[str]) -> dict:
    """Write ``bench.json`` (rows, run metadata, ratios, ceiling, warnings) and ``bench.csv`` into ``out_dir``."""
    out = Path(out_dir)
    meta = {**run_metadata(), "caches": machine()["caches"], "isa": instruction_sets()}
    # Measured the way decode reads, with each thread count the rows ran with.
    bandwidths = genai.read_bandwidths([r.threads for r in rows] or [0])
    meta["memory_bandwidth_gbs"] = max(bandwidths.values())
    meta["memory_bandwidth_gbs_by_threads"] = {str(t): gbs for t, gbs in bandwidths.items()}
    report = {"metadata": meta, "rows": [asdict(r) for r in rows], "engine_ratios": engine_ratios(rows),
              "endpoint_ratios": endpoint_ratios(rows), "ttft_breakdown": ttft_breakdown(rows),
              "noisy": [f"{r.model}/{r.engine}/{r.target_prompt_tokens}/{r.target_gen_tokens}/{r.threads}"
                        for r in rows if r.noisy],
              "short": [f"{r.model}/{r.engine}/{r.target_prompt_tokens}/{r.target_gen_tokens}"
                        for r in rows if r.gen_tokens < r.target_gen_tokens],
              "max_harness_overhead_pct": max((r.harness_overhead_pct for r in rows), default=0.0),
              "warnings": warnings(rows)}
    report["decode_ceiling"] = decode_ceiling(report["rows"], bandwidths, last_level_cache_mb(meta["caches"]))
    artifacts.write_json(out / "bench.json", report)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[f.name for f in fields(BenchRow)])
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    artifacts.write_text(out / "bench.csv", table.getvalue())
    return report


def _measure_task(job: dict, _emit) -> dict:
    """Worker task: :func:`measure_model` on one model through Foundry Local."""
    return measure_model(job["name"], job["prompt_lengths"], job["gen_lengths"], job["repeats"], job["warmup"],
                         job["cache"])


def _endpoint_task(job: dict, _emit) -> list[dict]:
    """Worker task: :func:`measure_endpoint` (the client in its own process, as an application's would be)."""
    return measure_endpoint(job, job["url"], job["key"], job["gen_lengths"], job["repeats"], job["warmup"])


if __name__ == "__main__":
    workers.serve({"measure": _measure_task, "endpoint": _endpoint_task})
