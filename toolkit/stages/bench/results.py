"""``bench.json`` and ``bench.csv``: the benchmark's result files (:mod:`slmops.toolkit.domain.results.bench` has the row)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, system
from slmops.toolkit.core.measure import cpu_info, timestamp, versions
from slmops.toolkit.domain.results.bench import BenchFile, BenchRow
from slmops.toolkit.domain.results.bench_metadata import Bandwidth, BenchMetadata
from slmops.toolkit.runtimes import genai
from slmops.toolkit.stages.bench.analysis import (
    decode_ceiling,
    endpoint_ratios,
    engine_ratios,
    instruction_sets,
    last_level_cache_mib,
    ttft_breakdown,
)


def write_results(rows: Sequence[BenchRow], out_dir: str | os.PathLike[str]) -> BenchFile:
    """Write ``bench.json`` (rows, run metadata, ratios, ceiling, warnings) and ``bench.csv`` into ``out_dir``; return what it holds."""
    out = Path(out_dir)
    # Measured the way decode reads, with each thread count the rows ran with.
    bandwidths = genai.read_bandwidths([r.threads for r in rows] or [0])
    meta = BenchMetadata(**asdict(cpu_info()), versions=versions(), timestamp=timestamp(), caches=system.cache_sizes(),
                         isa=instruction_sets(), memory_bandwidth_gbs=max(bandwidths.values()),
                         bandwidth_by_threads=tuple(Bandwidth(t, gbs) for t, gbs in bandwidths.items()))
    written = BenchFile(
        meta, tuple(rows), tuple(engine_ratios(rows)), tuple(endpoint_ratios(rows)), tuple(ttft_breakdown(rows)),
        tuple(f"{r.model}/{r.engine}/{r.target_prompt_tokens}/{r.target_gen_tokens}/{r.threads}"
              for r in rows if r.noisy),
        tuple(f"{r.model}/{r.engine}/{r.target_prompt_tokens}/{r.target_gen_tokens}"
              for r in rows if r.gen_tokens < r.target_gen_tokens),
        max((r.harness_overhead_pct for r in rows), default=0.0),
        tuple(decode_ceiling(rows, bandwidths, last_level_cache_mib(meta.caches))))
    codec.write(out / "bench.json", written)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[f.name for f in fields(BenchRow)])
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    artifacts.write_text(out / "bench.csv", table.getvalue())
    return written


def read_results(path: str | os.PathLike[str]) -> BenchFile | None:
    """A written ``bench.json`` (any known version; its rows under today's names), or None when there is none.

    Raises:
        ResultVersionError: it was written by a newer toolkit.
        RecordError: a row or section of the wrong shape.
    """
    found = artifacts.read_json(Path(path))
    if not isinstance(found, dict) or not isinstance(found.get("rows"), list):
        return None
    return codec.load(BenchFile, found, kind=str(path))
