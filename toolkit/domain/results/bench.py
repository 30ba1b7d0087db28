"""The benchmark's records: one timed run, the one function that turns timed runs into figures, and a ``bench.json`` row.

Every decode rate in the toolkit comes from :func:`decode_tps` (tokens after the first over the
time after the first token); every row of ``bench.json`` from :func:`run_metrics`. Latency
percentiles are of latencies (time to first token, time per output token), never of a
throughput, whose p90 would be the optimistic figure.

Version history of ``bench.json``:

1. (no ``schema_version``) rows had ``decode_tps_p50``/``decode_tps_p90`` (percentiles of a
   throughput) and ``peak_rss_mb``/``load_rss_mb`` (MiB); still loaded (:meth:`BenchFile.upgrade`):
   memory under its ``_mib`` name, the throughput percentiles dropped, the latency percentiles absent (0).
2. rows with ``tpot_ms`` and latency percentiles, memory in ``_mib``.
3. ``metadata`` a :class:`~slmops.toolkit.domain.results.bench_metadata.BenchMetadata`, its bandwidth by thread
   count as rows (:func:`~slmops.toolkit.domain.results.bench_metadata.upgrade_metadata` reads 1 and 2's).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, fields
from typing import ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.domain.results.bench_metadata import BenchMetadata, upgrade_metadata

#: The version :func:`slmops.toolkit.stages.bench.write_results` writes.
SCHEMA_VERSION = 3

#: Coefficient of variation of decode tokens/s above which a figure is flagged as too noisy to trust.
NOISY_CV = 0.10


def decode_tps(gen_tokens: float, ttft_s: float, total_s: float) -> float:
    """Decode rate: the tokens after the first over the time after the first token (0 when it cannot be timed).

    Example:
        >>> decode_tps(33, 0.1, 1.1)
        32.0
    """
    decode_s = total_s - ttft_s
    return (gen_tokens - 1) / decode_s if gen_tokens > 1 and decode_s > 0 else 0.0


@dataclass(frozen=True)
class TimedRun:
    """One timed generation: the record every engine's timing produces.

    Attributes:
        ttft_s: Seconds to the first token.
        total_s: Seconds for the whole request.
        gen_tokens: Tokens generated.
        prompt_tokens: Prompt tokens the runtime counted.
        harness_s: Seconds the toolkit's own code spent between tokens.
        setup_s: Seconds of ``ttft_s`` spent opening the runtime's session and request (Foundry Local).
        cpu_percent: This process's CPU time over wall time (100 = one core busy).
        system_cpu_percent: All CPUs' busy time over the same run (100 = the whole machine busy).
    """

    ttft_s: float
    total_s: float
    gen_tokens: int
    prompt_tokens: int = 0
    harness_s: float = 0.0
    setup_s: float = 0.0
    cpu_percent: float = 0.0
    system_cpu_percent: float = 0.0

    @property
    def decode_s(self) -> float:
        """Seconds after the first token."""
        return self.total_s - self.ttft_s

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first (:func:`decode_tps`)."""
        return decode_tps(self.gen_tokens, self.ttft_s, self.total_s)

    @property
    def tpot_ms(self) -> float:
        """Time per output token after the first, ms (0 when it cannot be timed)."""
        rate = self.decode_tps
        return 1000 / rate if rate else 0.0


@dataclass(frozen=True)
class BenchRow:
    """One benchmark figure set: one model, engine, prompt length, generation length and thread count.

    Means over ``repeats`` measured runs, with spread where it matters.

    Attributes:
        model: Registered name.
        precision: The build's precision (from its manifest).
        engine: ``foundry-local``, ``ort-genai`` or ``endpoint``.
        target_prompt_tokens: The asked prompt length; ``prompt_tokens`` is what the runtime counted.
        target_gen_tokens: The asked generation length; ``gen_tokens`` the mean generated.
        threads: ONNX Runtime's intra-op threads as configured (0: the runtime's default).
        ttft_ms, ttft_ms_sd, ttft_ms_p50, ttft_ms_p90: Time to first token, ms: mean, sd, median, 90th percentile.
        prefill_tps: Prompt tokens over the mean time to first token, tokens/s.
        decode_tps, decode_tps_sd: Decode rate (:func:`decode_tps`), tokens/s: mean and sd over runs.
        tpot_ms, tpot_ms_p50, tpot_ms_p90: Time per output token after the first, ms: mean, median, 90th percentile.
        decode_cv: Coefficient of variation of the decode rate over runs.
        noisy: ``decode_cv`` over :data:`NOISY_CV`.
        e2e_ms, e2e_ms_sd: Whole request, ms.
        peak_rss_mib: Peak RSS of the benchmarking process, MiB.
        cpu_percent: The benchmarked process's CPU time over wall time (100 = one core busy).
        system_cpu_percent: All CPUs' busy time over the same runs (100 = the whole machine busy).
        harness_overhead_pct: Time spent in this toolkit's own code between tokens, % of decode time.
        size_mb: The model folder on disk, MB (10^6 bytes).
        weights_read_mb: Weights read to decode one token, MB (10^6 bytes): size on disk less tables only
            looked up by row (an embedding table not shared with the LM head).
        load_s: Model load time, s.
        load_rss_mib: Process memory the load added, MiB.
        repeats: Measured runs.
        setup_ms: Of the time to first token, opening the runtime's session and request (Foundry Local), ms.
        template_ms: Rendering the chat template and tokenizing the prompt, timed with the
            toolkit's own tokenizer, ms: what the runtime does for that, estimated (Foundry Local;
            the direct engine is given token ids).
    """

    model: str = ""
    precision: str = ""
    engine: str = ""
    target_prompt_tokens: int = 0
    prompt_tokens: int = 0
    target_gen_tokens: int = 0
    gen_tokens: float = 0.0
    threads: int = 0
    ttft_ms: float = 0.0
    ttft_ms_sd: float = 0.0
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    decode_tps_sd: float = 0.0
    decode_cv: float = 0.0
    noisy: bool = False
    e2e_ms: float = 0.0
    e2e_ms_sd: float = 0.0
    peak_rss_mib: float = 0.0
    cpu_percent: float = 0.0
    system_cpu_percent: float = 0.0
    harness_overhead_pct: float = 0.0
    size_mb: float = 0.0
    weights_read_mb: float = 0.0
    load_s: float = 0.0
    load_rss_mib: float = 0.0
    repeats: int = 0
    setup_ms: float = 0.0
    template_ms: float = 0.0
    tpot_ms: float = 0.0
    tpot_ms_p50: float = 0.0
    tpot_ms_p90: float = 0.0
    ttft_ms_p50: float = 0.0
    ttft_ms_p90: float = 0.0


@dataclass(frozen=True)
class HeadlineRow(BenchRow):
    """A model's headline row (one engine, the shortest prompt): a :class:`BenchRow` that says where its decode speed is from.

    Attributes:
        decode_from: The engine whose row gave ``decode_tps``, when not the row's own (a row that generated
            too few tokens to time decode takes the direct engine's); "" for its own.
    """

    decode_from: str = ""

    @classmethod
    def of(cls, row: BenchRow) -> HeadlineRow:
        """``row`` as a headline row of its own decode speed."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(BenchRow)})


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0 for none).

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0, 10.0], 0.9)
        10.0
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run_metrics(runs: list[TimedRun], prompt_tokens: int) -> dict[str, float | bool | int]:
    """The figures of a set of timed runs: the one place a row's timing figures are computed.

    Returns:
        The timing fields of :class:`BenchRow` (``ttft_ms*``, ``prefill_tps``, ``decode_tps*``, ``tpot_ms*``,
        ``decode_cv``, ``noisy``, ``e2e_ms*``, ``gen_tokens``, ``cpu_percent``, ``system_cpu_percent``,
        ``harness_overhead_pct``, ``setup_ms``, ``repeats``).

    Example:
        >>> run_metrics([TimedRun(0.1, 1.1, 33)], 16)["decode_tps"]
        32.0
    """
    ttfts = [r.ttft_s * 1000 for r in runs]
    timed = [r for r in runs if r.decode_tps]
    decodes = [r.decode_tps for r in timed] or [0.0]
    tpots = [r.tpot_ms for r in timed] or [0.0]
    mean = statistics.mean(decodes)
    cv = _sd(decodes) / mean if mean else 0.0
    e2e = [r.total_s * 1000 for r in runs]
    overhead = [r.harness_s / r.decode_s * 100 for r in runs if r.decode_s > 0] or [0.0]
    return {
        "gen_tokens": statistics.mean(r.gen_tokens for r in runs),
        "ttft_ms": round(statistics.mean(ttfts), 2), "ttft_ms_sd": round(_sd(ttfts), 2),
        "ttft_ms_p50": round(percentile(ttfts, 0.5), 2), "ttft_ms_p90": round(percentile(ttfts, 0.9), 2),
        "prefill_tps": round(prompt_tokens / (statistics.mean(ttfts) / 1000), 1) if statistics.mean(ttfts) else 0.0,
        "decode_tps": round(mean, 2), "decode_tps_sd": round(_sd(decodes), 2),
        "tpot_ms": round(statistics.mean(tpots), 4), "tpot_ms_p50": round(percentile(tpots, 0.5), 4),
        "tpot_ms_p90": round(percentile(tpots, 0.9), 4),
        "decode_cv": round(cv, 4), "noisy": cv > NOISY_CV,
        "e2e_ms": round(statistics.mean(e2e), 2), "e2e_ms_sd": round(_sd(e2e), 2),
        "cpu_percent": round(statistics.mean(r.cpu_percent for r in runs), 1),
        "system_cpu_percent": round(statistics.mean(r.system_cpu_percent for r in runs), 1),
        "harness_overhead_pct": round(statistics.mean(overhead), 4),
        "setup_ms": round(statistics.mean(r.setup_s for r in runs) * 1000, 3),
        "repeats": len(runs),
    }


@dataclass(frozen=True)
class EngineRatio:
    """Foundry Local's decode speed over the direct engine's at the same lengths and thread count.

    Attributes:
        model: The model.
        target_prompt_tokens: The prompt length asked.
        target_gen_tokens: The generation length asked.
        threads: Intra-op threads (0: the runtime's default).
        foundry_decode_tps: Foundry Local's decode tokens/s.
        direct_decode_tps: ONNX Runtime GenAI's, called directly.
        ratio: The first over the second.
    """

    model: str = ""
    target_prompt_tokens: int = 0
    target_gen_tokens: int = 0
    threads: int = 0
    foundry_decode_tps: float = 0.0
    direct_decode_tps: float = 0.0
    ratio: float = 0.0


@dataclass(frozen=True)
class EndpointRatio:
    """The OpenAI-compatible endpoint against Foundry Local in-process at the same lengths.

    Attributes:
        model: The model.
        target_prompt_tokens: The prompt length asked.
        target_gen_tokens: The generation length asked.
        in_process_decode_tps: Decode tokens/s in-process.
        endpoint_decode_tps: Decode tokens/s through the endpoint.
        decode_ratio: The second over the first.
        in_process_ttft_ms: Time to first token in-process, ms.
        endpoint_ttft_ms: Time to first token through the endpoint, ms.
        ttft_overhead_ms: The second less the first, ms.
    """

    model: str = ""
    target_prompt_tokens: int = 0
    target_gen_tokens: int = 0
    in_process_decode_tps: float = 0.0
    endpoint_decode_tps: float = 0.0
    decode_ratio: float = 0.0
    in_process_ttft_ms: float = 0.0
    endpoint_ttft_ms: float = 0.0
    ttft_overhead_ms: float = 0.0


@dataclass(frozen=True)
class TtftLine:
    """Foundry Local's time to first token, part by part, against the direct engine's on the same prompt ids.

    Attributes:
        model: The model.
        target_prompt_tokens: The prompt length asked.
        threads: Intra-op threads.
        foundry_ttft_ms: Foundry Local's time to first token, ms.
        direct_ttft_ms: The direct engine's, ms.
        ratio: The first over the second.
        setup_ms: Session setup, ms.
        template_ms: Template and tokenizer, ms.
        prefill_ms: The prompt pass and the first token (the direct engine's), ms.
        harness_ms: The harness's own share, ms.
        runtime_other_ms: What remains: the runtime's request handling, ms (None: not measurable apart).
        unmeasured: Why ``runtime_other_ms`` is None, in words ("" otherwise).
    """

    model: str = ""
    target_prompt_tokens: int = 0
    threads: int = 0
    foundry_ttft_ms: float = 0.0
    direct_ttft_ms: float = 0.0
    ratio: float = 0.0
    setup_ms: float = 0.0
    template_ms: float = 0.0
    prefill_ms: float = 0.0
    harness_ms: float = 0.0
    runtime_other_ms: float | None = None
    unmeasured: str = ""


@dataclass(frozen=True)
class CeilingRow:
    """One row's decode speed against the memory-bandwidth bound (every token reads the weights once).

    Attributes:
        model: The model.
        engine: The engine.
        target_prompt_tokens: The prompt length asked.
        target_gen_tokens: The generation length asked.
        threads: Intra-op threads.
        weights_read_mb: MB of weights read per token.
        bandwidth_gbs: The read bandwidth at that thread count, GB/s.
        decode_tps: Measured decode tokens/s.
        ceiling_tps: The bound, tokens/s.
        percent_of_ceiling: The first over the second, %.
        above_bound_because: Why a row is above 100%, in words ("" otherwise).
    """

    model: str = ""
    engine: str = ""
    target_prompt_tokens: int = 0
    target_gen_tokens: int = 0
    threads: int = 0
    weights_read_mb: float = 0.0
    bandwidth_gbs: float = 0.0
    decode_tps: float = 0.0
    ceiling_tps: float = 0.0
    percent_of_ceiling: float = 0.0
    above_bound_because: str = ""


@dataclass(frozen=True)
class BenchFile:
    """``bench.json``: every row, the run's metadata, and what the rows say together.

    A field a row or a section's line lacks (a hand-written or partial file, or one written before the field
    was) reads as its type's zero.

    Attributes:
        metadata: The machine, packages and run, its caches, instruction sets and memory bandwidth.
        rows: One per model, engine, prompt length, generation length and thread count.
        engine_ratios: Foundry Local over the direct engine, per model and lengths.
        endpoint_ratios: The endpoint over Foundry Local in-process, per model and lengths.
        ttft_breakdown: Foundry Local's first token against the direct engine's, by part.
        noisy: ``model/engine/prompt/gen/threads`` of each row whose decode figure is too noisy to trust.
        short: ``model/engine/prompt/gen`` of each row that generated fewer tokens than asked.
        max_harness_overhead_pct: The largest share of decode time spent in the toolkit's own code, %.
        decode_ceiling: Each row's decode rate against the memory-bandwidth bound.
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "bench.json"

    metadata: BenchMetadata = field(default_factory=BenchMetadata)
    rows: tuple[BenchRow, ...] = ()
    engine_ratios: tuple[EngineRatio, ...] = ()
    endpoint_ratios: tuple[EndpointRatio, ...] = ()
    ttft_breakdown: tuple[TtftLine, ...] = ()
    noisy: tuple[str, ...] = ()
    short: tuple[str, ...] = ()
    max_harness_overhead_pct: float = 0.0
    decode_ceiling: tuple[CeilingRow, ...] = ()

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """Version 1's rows with their memory under the ``_mib`` names; 1 and 2's metadata as version 3's."""
        if version == 1:
            data = {**data, "rows": [{**row, "peak_rss_mib": row.get("peak_rss_mb", 0.0),
                                      "load_rss_mib": row.get("load_rss_mb", 0.0)}
                                     for row in data.get("rows", []) if isinstance(row, dict)]}
        return {**data, "metadata": upgrade_metadata(data.get("metadata", {}))}


def rows_of(data: dict) -> list[BenchRow]:
    """The rows of a loaded ``bench.json`` of any known version, typed.

    Raises:
        ResultVersionError: a version newer than this toolkit knows.
        RecordError: a row of the wrong shape.

    Example:
        >>> rows_of({"rows": []})
        []
    """
    return list(codec.load(BenchFile, data).rows)
