"""What a benchmark's rows say together: headline rows, engine ratios, the first-token breakdown, the bandwidth bound."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from slmops.toolkit.core import system
from slmops.toolkit.domain.results.bench import (
    BenchFile,
    BenchRow,
    CeilingRow,
    EndpointRatio,
    EngineRatio,
    HeadlineRow,
    TtftLine,
)

_MIB = 1 << 20


def timed_too_few(row: BenchRow) -> bool:
    """True when a row generated under half its asked tokens: too few to time decode by.

    Foundry Local has no minimum length, and a terse fine-tune (the demo's answers in a few
    tokens) stops early whatever the prompt asks; its decode speed is then the direct
    engine's row of the same model and prompt, which generates exactly the asked tokens.
    """
    return row.gen_tokens < row.target_gen_tokens / 2


def headline_rows(rows: Sequence[BenchRow], engine: str = "foundry-local") -> list[HeadlineRow]:
    """One row per model for headline figures: ``engine``, the shortest prompt, the first generation length.

    A row that generated too few tokens to time decode (:func:`timed_too_few`) takes its decode
    speed from the direct engine's row of the same model, prompt and length, and says so in
    ``decode_from``.
    """
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens): r for r in rows if r.engine == "ort-genai"}
    rows = [r for r in rows if r.engine == engine]
    if not rows:
        return []
    shortest = min(r.target_prompt_tokens for r in rows)
    picked: dict[str, HeadlineRow] = {}
    for row in rows:
        if row.target_prompt_tokens == shortest and row.model not in picked:
            other = direct.get((row.model, row.target_prompt_tokens, row.target_gen_tokens))
            head = HeadlineRow.of(row)
            if timed_too_few(row) and other is not None:
                head = replace(head, decode_tps=other.decode_tps, decode_from=other.engine)
            picked[row.model] = head
    return list(picked.values())


def rows_for(report: BenchFile, engine: str | None = "foundry-local") -> list[BenchRow]:
    """The rows of a ``bench.json`` for one engine (None: all)."""
    return [row for row in report.rows if engine is None or row.engine == engine]


def engine_ratios(rows: Sequence[BenchRow]) -> list[EngineRatio]:
    """Foundry Local's decode tokens/s over the direct engine's at the same lengths and thread count."""
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads): r for r in rows
              if r.engine == "ort-genai"}
    out = []
    for r in rows:
        other = direct.get((r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads))
        if r.engine == "foundry-local" and other is not None and other.decode_tps and not timed_too_few(r):
            out.append(EngineRatio(r.model, r.target_prompt_tokens, r.target_gen_tokens, r.threads, r.decode_tps,
                                   other.decode_tps, round(r.decode_tps / other.decode_tps, 3)))
    return out


def endpoint_ratios(rows: Sequence[BenchRow]) -> list[EndpointRatio]:
    """The endpoint against Foundry Local in-process at the same lengths: decode ratio and first-token overhead."""
    direct = {(r.model, r.target_prompt_tokens, r.target_gen_tokens): r for r in rows if r.engine == "foundry-local"}
    out = []
    for r in rows:
        base = direct.get((r.model, r.target_prompt_tokens, r.target_gen_tokens))
        if r.engine == "endpoint" and base is not None and base.decode_tps and not timed_too_few(r):
            out.append(EndpointRatio(r.model, r.target_prompt_tokens, r.target_gen_tokens, base.decode_tps,
                                     r.decode_tps, round(r.decode_tps / base.decode_tps, 3), base.ttft_ms, r.ttft_ms,
                                     round(r.ttft_ms - base.ttft_ms, 2)))
    return out


def ttft_breakdown(rows: Sequence[BenchRow]) -> list[TtftLine]:
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
        line = TtftLine(r.model, r.target_prompt_tokens, r.threads, r.ttft_ms, other.ttft_ms,
                        round(r.ttft_ms / other.ttft_ms, 3), r.setup_ms, r.template_ms, other.ttft_ms, harness, remainder)
        if remainder < 0:
            line = replace(line, prefill_ms=round(r.ttft_ms - measured, 2), runtime_other_ms=None,
                           unmeasured=(f"Foundry Local's prefill is {-remainder:.0f} ms faster than the direct "
                                       f"engine's ({other.ttft_ms:.0f} ms): its prefill and its request handling are "
                                       "given together, they cannot be measured apart"))
        out.append(line)
    return out


def decode_ceiling(rows: Sequence[BenchRow], bandwidth_gbs: float | dict[int, float], llc_mib: float = 0.0) -> list[CeilingRow]:
    """Each row's decode speed against the bandwidth bound: every token reads the weights once.

    The bound is bandwidth / ``weights_read_mb`` (size on disk less tables only looked up by
    row); real decode also reads the KV cache and spends time computing, so 100% is out of
    reach, and the gap says how far. A row above 100% gets its likely reason; a row that
    generated too few tokens to time decode (:func:`timed_too_few`) is left out.

    Args:
        rows: ``bench.json`` rows.
        bandwidth_gbs: Read bandwidth in GB/s, one figure or one per thread count (the row's
            ``threads``; 0 is the runtime's default).
        llc_mib: The last-level cache in MiB: weights that fit in it are not read from memory.
    """
    out = []
    for row in rows:
        if timed_too_few(row):
            continue  # a few tokens do not time decode
        read_mb = row.weights_read_mb or row.size_mb  # 0: a row written before the field was
        threads = row.threads
        gbs = bandwidth_gbs.get(threads, max(bandwidth_gbs.values(), default=0.0)) \
            if isinstance(bandwidth_gbs, dict) else bandwidth_gbs
        ceiling = gbs * 1e9 / (read_mb * 1e6) if read_mb else 0.0
        percent = round(100 * row.decode_tps / ceiling, 1) if ceiling else 0.0
        reason = ""
        if percent > 100:
            reason = (f"the weights read per token ({read_mb:.0f} MB) fit in the {llc_mib:.0f} MiB last-level cache"
                      if read_mb <= llc_mib * _MIB / 1e6 else "faster than the measured read bandwidth allows: the probe "
                      "under-measured this machine's bandwidth (rerun on a quieter machine)")
        out.append(CeilingRow(row.model, row.engine, row.target_prompt_tokens, row.target_gen_tokens,
                              threads, read_mb, round(gbs, 2), row.decode_tps, round(ceiling, 1), percent, reason))
    return out


def last_level_cache_mib(caches: dict[str, str]) -> float:
    """The largest cache in MiB from :func:`slmops.toolkit.core.measure.machine`'s ``caches`` (``{"L3": "32768K"}``)."""
    sizes = []
    for size in caches.values():
        number = size.rstrip("KMG")
        if number.isdigit():
            sizes.append(int(number) * {"K": 1 / 1024, "M": 1, "G": 1024}.get(size[-1:], 1 / 1024 / 1024))
    return max(sizes, default=0.0)


def instruction_sets() -> dict[str, bool]:
    """The CPU's vector extensions that decide ONNX Runtime's quantized kernels (the CPU's flags).

    Without AVX-512 (or AVX-VNNI), INT8 and INT4 MatMuls have no fast integer dot product, so a
    quantized model's prefill (compute-bound) can be slower than FP32's while its decode
    (bandwidth-bound) is faster.
    """
    flags = system.cpu_flags()
    return {name: name in flags for name in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}
