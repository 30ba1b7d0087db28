"""Stage 4, the benchmark, without a model: one metrics function, settings refused, the summary and its
ceiling, the direct engine's payloads."""

from __future__ import annotations

import json
import statistics
from dataclasses import fields, replace

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.domain.results.bench import BenchFile, BenchRow, TimedRun, decode_tps, rows_of, run_metrics
from slmops.toolkit.domain.results.checklist import ChecklistReport, ModelReport, QualityRecord
from slmops.toolkit.presentation import bench_text
from slmops.toolkit.runtimes.genai_jobs import Agreement, BenchJob, DirectBench
from slmops.toolkit.stages import bench


def test_one_metrics_function_gives_latency_percentiles_and_reads_an_old_bench_file() -> None:
    runs = [TimedRun(0.1, 1.1, 33), TimedRun(0.2, 2.2, 33), TimedRun(0.1, 0.6, 33)]  # 32, 16 and 64 tok/s
    figures = run_metrics(runs, prompt_tokens=16)
    assert figures["decode_tps"] == round((32 + 16 + 64) / 3, 2) == round(statistics.mean(r.decode_tps for r in runs), 2)
    # Percentiles of the latency (ms per output token), never of the throughput: p90 is the slow run.
    assert (figures["tpot_ms_p50"], figures["tpot_ms_p90"]) == (31.25, 62.5) and figures["ttft_ms_p90"] == 200.0
    assert decode_tps(1, 0.1, 1.0) == 0.0 and TimedRun(0.1, 0.1, 5).tpot_ms == 0.0  # nothing to time
    # bench.json before schema_version: memory under its MiB names, the throughput percentiles gone.
    old = {"rows": [{**{f.name: f.default for f in fields(BenchRow)}, "peak_rss_mb": 512.0, "load_rss_mb": 64.0,
                     "decode_tps_p90": 99.0, "model": "m-int4"}]}
    for key in ("peak_rss_mib", "load_rss_mib", "tpot_ms", "tpot_ms_p50", "tpot_ms_p90", "ttft_ms_p50", "ttft_ms_p90"):
        old["rows"][0].pop(key)
    row = rows_of(old)[0]
    assert (row.peak_rss_mib, row.load_rss_mib, row.tpot_ms) == (512.0, 64.0, 0.0)
    with pytest.raises(SlmopsError, match="schema_version 4"):  # newer than this toolkit's (3)
        rows_of({"schema_version": 4, "rows": []})


def test_bench_rejects_bad_settings() -> None:
    with pytest.raises(SlmopsError, match="repeats"):
        bench.bench(["x"], repeats=0)
    with pytest.raises(SlmopsError, match="engines"):
        bench.bench(["x"], engines=("llama.cpp",))
    with pytest.raises(SlmopsError, match="generation lengths"):
        bench.bench(["x"], gen_lengths=[1])
    with pytest.raises(SlmopsError, match="Thread counts"):
        bench.bench(["x"], threads=[0])


def test_summary_and_ceiling_from_a_report() -> None:
    def row(precision: str, engine: str, tps: float, size: float) -> dict:
        return {"model": f"m-{precision}", "precision": precision, "engine": engine, "target_prompt_tokens": 16,
                "decode_tps": tps, "size_mb": size}

    table = [row("fp32", "foundry-local", 30.0, 540.0), row("int4", "foundry-local", 99.0, 200.0),
             row("int4", "ort-genai", 100.0, 200.0)]
    report = codec.load(BenchFile, {"rows": table})
    quality = ChecklistReport([ModelReport("m-int4", [], quality=QualityRecord("m-fp32", 0.666, 0.2, 11.0, 10.0, 300))])
    # The agreement is judged against its stated target: 0.666 is short of 0.85 (warn), never a bare figure.
    assert bench_text.summary_lines(report, quality) == [
        "int4: 3.3x fp32 decode speed at 0.37x size, top-1 agreement 0.666 (warn: target >= 0.85)"]
    ceiling = bench.decode_ceiling(report.rows, bandwidth_gbs=20.0)
    assert ceiling[1].ceiling_tps == 100.0 and ceiling[1].percent_of_ceiling == 99.0
    assert not any(row.above_bound_because for row in ceiling)
    # Per thread count; a row above the bound says why: weights that fit the cache, else the probe.
    rows = [replace(row, threads=2) for row in report.rows]
    ceiling = bench.decode_ceiling(rows, {0: 40.0, 2: 10.0}, llc_mib=256.0)
    assert ceiling[1].bandwidth_gbs == 10.0 and ceiling[1].percent_of_ceiling == 198.0
    assert "fit in the 256 MiB last-level cache" in ceiling[1].above_bound_because
    assert "under-measured" in bench.decode_ceiling(rows, {2: 10.0}, llc_mib=32.0)[1].above_bound_because
    assert bench.last_level_cache_mib({"L1d": "48K", "L2": "1024K", "L3": "32768K"}) == 32.0


def test_a_terse_model_takes_decode_speed_from_the_direct_engine() -> None:
    def row(engine: str, tps: float, gen: float) -> BenchRow:
        return BenchRow(model="m-int4", precision="int4", engine=engine, target_prompt_tokens=16, target_gen_tokens=32,
                        gen_tokens=gen, threads=2, decode_tps=tps, size_mb=200.0, weights_read_mb=180.0)

    short, direct = row("foundry-local", 9.0, 4.0), row("ort-genai", 240.0, 32.0)
    assert bench.timed_too_few(short) and not bench.timed_too_few(direct)
    head = bench.headline_rows([short, direct])[0]
    assert (head.decode_tps, head.decode_from, head.engine) == (240.0, "ort-genai", "foundry-local")
    assert [r.engine for r in bench.decode_ceiling([short, direct], 40.0)] == ["ort-genai"]
    assert bench.engine_ratios([short, direct]) == []  # nothing to compare over four tokens
    own = bench.headline_rows([replace(short, gen_tokens=30.0), direct])[0]  # long enough: its own
    assert (own.decode_tps, own.decode_from) == (9.0, "")


def test_the_direct_benchmark_child_sends_typed_payloads_that_survive_json() -> None:
    from slmops.toolkit.core import codec
    from slmops.toolkit.domain.results.bench import TimedRun

    job = BenchJob("models/int4", ((1, 2, 3), (4,)), (8, 16), repeats=3, warmup=1, threads=2)
    assert codec.load(BenchJob, json.loads(json.dumps(codec.dump(job)))) == job
    run = TimedRun(ttft_s=0.1, total_s=0.5, gen_tokens=9, harness_s=0.001, cpu_percent=98.0)
    measured = DirectBench(1.5, 300.25, 812.0, (((run, run), (run,)),))
    back = codec.load(DirectBench, json.loads(json.dumps(codec.dump(measured))))
    assert back == measured and back.runs[0][0][1].decode_tps == run.decode_tps == 20.0
    agreement = Agreement("int4", 300, 0.875, 0.0421, 12.5, 11.0)
    assert codec.load(Agreement, {**codec.dump(agreement), "extra": 1}) == agreement
    assert set(codec.dump(agreement)) >= {"top1_agreement", "kl_divergence"}


def test_notebook_4s_page_is_one_call_on_the_typed_results_and_one_recommendation(tmp_path) -> None:
    """The page takes bench.json, test.json and the recommendation as given (computed once by the notebook) and
    reads nothing from the run folder; the notebook holds only that call."""
    from pathlib import Path

    from slmops.toolkit.domain import deployment_choice
    from slmops.toolkit.presentation import bench_page

    def row(precision: str, engine: str, tps: float, gen: float) -> BenchRow:
        return BenchRow(model=f"m-{precision}", precision=precision, engine=engine, target_prompt_tokens=16,
                        prompt_tokens=16, target_gen_tokens=4, gen_tokens=gen, decode_tps=tps, ttft_ms=20.0,
                        e2e_ms=60.0, size_mb={"fp32": 540.0, "int4": 200.0}[precision], repeats=2)

    rows = (row("fp32", "foundry-local", 30.0, 4.0), row("int4", "foundry-local", 90.0, 4.0),
            row("fp32", "ort-genai", 31.0, 4), row("int4", "ort-genai", 95.0, 4))
    results = BenchFile(rows=rows, engine_ratios=tuple(bench.engine_ratios(rows)))
    tests = ChecklistReport([ModelReport("m-int4", [], quality=QualityRecord("m-fp32", 0.9, 0.1, 11.0, 10.0, 300))])
    run = deployment_choice.RunFigures("run", sizes={"fp32": 540.0, "int4": 200.0},
                                       verdicts={(p, "domain", "domain-overall"): "pass" for p in ("fp32", "int4")},
                                       headline={r.precision: r for r in bench.headline_rows(list(rows))})
    decision = deployment_choice.recommend(run)
    shown = bench_page.benchmark_outputs(results, tests, decision, tmp_path)
    texts = [item.data for item in shown if isinstance(getattr(item, "data", None), str)]
    assert sum(decision.sentence in text for text in texts) == 1 and decision.choice == "int4"
    assert any("int4: 3.0x fp32 decode speed at 0.37x size, top-1 agreement 0.900" in text for text in texts)
    assert {p.name for p in tmp_path.glob("*.png")} >= {"decode_tps.png", "ttft_ms.png", "tradeoff.png"}
    source = (Path(__file__).parents[2] / "notebooks" / "04_benchmark.py").read_text()
    assert source.count("recommend(") == 1 and source.count("read_report(") == 1
    assert "bench_page.benchmark_outputs(" in source
