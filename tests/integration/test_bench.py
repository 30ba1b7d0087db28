"""Stage 4, the benchmark, on a tiny model through the real Foundry Local runtime: its rows and files, and a
sweep over generation lengths and threads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from slmops.toolkit.domain.results.bench import NOISY_CV
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.presentation import plots
from slmops.toolkit.stages import bench, register
from slmops.toolkit.weights.weight_summary import lookup_only_mb


def test_bench_rows_and_files(tiny_int4: Path, tmp_path: Path) -> None:
    register.register(tiny_int4, "tiny-bench", model_config=register.ModelConfig(threads=None))
    rows = bench.bench(["tiny-bench"], prompt_lengths=[16, 64], gen_lengths=[8], repeats=3, warmup=1, progress=False)
    foundry = [r for r in rows if r.engine == "foundry-local"]
    direct = [r for r in rows if r.engine == "ort-genai"]
    assert [r.target_prompt_tokens for r in foundry] == [16, 64] == [r.target_prompt_tokens for r in direct]
    # Cut text re-tokenizes within a token or two of the asked length; both engines get the same ids.
    assert [abs(r.prompt_tokens - want) <= 2 for r, want in zip(foundry, [16, 64], strict=True)] == [True, True]
    assert [r.prompt_tokens for r in foundry] == [r.prompt_tokens for r in direct]
    assert all(r.gen_tokens == 8 for r in direct)  # EOS ignored: exactly the asked number
    assert {r.threads for r in rows} == {0}  # nothing registered: the runtime's default, on both engines
    # The builder's INT4 keeps an FP32 embedding table apart from the int4 LM head: decoding a
    # token reads one row of it, so it is left out of the weights read per token.
    table_mb = read_manifest(tiny_int4).weights.parameters["fp32"] * 4 / 1e6
    assert lookup_only_mb(tiny_int4 / "model.onnx") == round(table_mb, 1) > 0
    assert all(r.weights_read_mb == round(r.size_mb - round(table_mb, 1), 1) for r in rows)
    for row in rows:
        assert row.precision == "int4" and row.repeats == 3 and row.target_gen_tokens == 8
        assert row.decode_tps > 0 and row.ttft_ms > 0 and row.e2e_ms >= row.ttft_ms
        assert 0 < row.tpot_ms_p50 <= row.tpot_ms_p90 and row.ttft_ms_p50 <= row.ttft_ms_p90  # latencies
        assert row.noisy == (row.decode_cv > NOISY_CV)
        assert 20 < row.peak_rss_mib < 4000 and row.size_mb > 0 and row.load_s > 0 and row.load_rss_mib > 0
        assert row.cpu_percent > 10 and 0 <= row.system_cpu_percent <= 100  # ticks are 10 ms: tiny runs read 0
        assert 0 <= row.harness_overhead_pct < 100
    report = bench.write_results(rows, tmp_path)
    assert report.metadata.versions["foundry-local-sdk"] == "2.2.1"
    assert report.metadata.physical_cores >= 1 and report.metadata.cpu
    assert [(r.model, r.target_prompt_tokens) for r in report.engine_ratios] == [("tiny-bench", 16),
                                                                                ("tiny-bench", 64)]
    assert all(r.ratio > 0 for r in report.engine_ratios)
    # Foundry's first token, line by line: measured parts, the direct engine's prefill, and what remains.
    for line in report.ttft_breakdown:
        assert line.setup_ms > 0 and line.template_ms > 0
        # The direct engine's prefill stands in for Foundry's, unless Foundry's first token beat it (then unmeasured).
        assert (line.prefill_ms == line.direct_ttft_ms) == (not line.unmeasured)
        parts = line.setup_ms + line.template_ms + line.prefill_ms + line.harness_ms
        other = line.runtime_other_ms  # None: Foundry's prefill beat the direct engine's, given together
        assert abs(parts + (other or 0.0) - line.foundry_ttft_ms) < 0.02 and (other is None) == bool(line.unmeasured)
    assert [line.target_prompt_tokens for line in report.ttft_breakdown] == [16, 64]
    assert all(0 < r.bandwidth_gbs and r.percent_of_ceiling > 0 for r in report.decode_ceiling)
    assert report.metadata.caches and report.metadata.bandwidth_gbs(0) > 1
    assert report.max_harness_overhead_pct == max(r.harness_overhead_pct for r in rows)
    with (tmp_path / "bench.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    stems = set(plots.bench_figures(report))
    assert stems == {"decode_tps", "ttft_ms", "latency_vs_prompt", "peak_rss_mib", "tradeoff"}  # no sweeps asked
    assert json.loads((tmp_path / "bench.json").read_text())["schema_version"] == 3
    assert bench.read_results(tmp_path / "bench.json").rows == report.rows == tuple(rows)


def test_bench_sweeps_generation_lengths_and_threads(tiny_int4: Path, tmp_path: Path) -> None:
    reg = register.register(tiny_int4, "tiny-threads", model_config=register.ModelConfig(threads=2))
    config = json.loads((reg.path / "genai_config.json").read_text())
    assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert "threads" not in config["search"]
    assert bench.configured_threads(tiny_int4) == 0  # the source folder is untouched
    rows = bench.bench(["tiny-threads"], prompt_lengths=[16], gen_lengths=[4, 12], threads=[1, 2], repeats=2, warmup=0,
                   progress=False)
    cells = sorted((r.engine, r.target_gen_tokens, r.threads) for r in rows)
    assert cells == [("foundry-local", 4, 2), ("foundry-local", 12, 2), ("ort-genai", 4, 1), ("ort-genai", 4, 2),
                     ("ort-genai", 12, 1), ("ort-genai", 12, 2)]
    assert [r.gen_tokens for r in rows if r.engine == "ort-genai"] == [4, 12, 4, 12]
    report = bench.write_results(rows, tmp_path)
    # Foundry runs with its registered 2 threads, so it is compared with the direct engine at 2 threads only.
    assert [(r.target_gen_tokens, r.threads) for r in report.engine_ratios] == [(4, 2), (12, 2)]
    assert {"latency_vs_generation", "decode_vs_threads"} <= set(plots.bench_figures(report))
    with pytest.raises(Exception, match="threads"):
        register.register(tiny_int4, "tiny-threads-bad", model_config=register.ModelConfig(threads=0))
