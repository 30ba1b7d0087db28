"""Comparing two runs: differences, verdict changes first, timings judged against their noise, exit codes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InvalidOptionError
from slmops.toolkit.domain import deployment_choice, provenance
from slmops.toolkit.domain.deployment_choice import NOT_JUDGED
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import (
    Bound,
    Check,
    ChecklistReport,
    CheckResult,
    ControlResult,
    ModelReport,
    QualityRecord,
    Thresholds,
    Unit,
    Verdict,
    verdict_of,
)
from slmops.toolkit.domain.results.checklist_file import dump_report, load_report
from slmops.toolkit.domain.results.deployment import Outcome, PrecisionFigures, PrecisionOutcome
from slmops.toolkit.domain.results.registration import RegisteredModel, read_registered, write_registered
from slmops.toolkit.domain.run_params import RunParams
from slmops.toolkit.presentation import compare
from slmops.toolkit.stages.checklist import quality_checks, read_report


def bench_row(precision: str, decode: float, sd: float, ttft: float, *, noisy: bool = False) -> dict:
    return {"model": f"m-{precision}", "precision": precision, "engine": "foundry-local", "target_prompt_tokens": 16,
            "prompt_tokens": 31, "target_gen_tokens": 32, "gen_tokens": 32, "threads": 0, "decode_tps": decode,
            "decode_tps_sd": sd, "ttft_ms": ttft, "ttft_ms_sd": 2.0, "noisy": noisy, "peak_rss_mb": 500.0}


def write_run(folder: Path, *, block: int, int4_mb: float, top1: float, domain_ok: bool, decode: float,
              ttft: float, record: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({**RunParams().as_dict(), "int4_block_size": block,
                                                    "run_dir": str(folder)}))
    (folder / "models").mkdir()
    (folder / "models" / "convert.json").write_text(json.dumps([{"precision": "fp32", "size_mb": 100.0},
                                                                {"precision": "int4", "size_mb": int4_mb}]))
    def check(model: str, kind: Check, case: str, value: float, passed: bool) -> CheckResult:
        return CheckResult(model, kind, case, value, Unit.SHARE, 0.5, Bound.AT_LEAST, verdict_of(passed), "t")

    quality = QualityRecord("m-fp32", top1, 0.2, 12.0, 10.9, 300)
    int4 = ModelReport("m-int4", [check("m-int4", Check.DOMAIN, "capital", float(domain_ok), domain_ok),
                                  *quality_checks("m-int4", quality, Thresholds())], quality=quality)
    fp32 = ModelReport("m-fp32", [CheckResult("m-fp32", Check.EDGE, "unicode", 0.1, Unit.SECONDS, 60.0, Bound.AT_MOST,
                                              Verdict.PASS, "t", "answered")])
    (folder / "test.json").write_text(json.dumps(dump_report(ChecklistReport([int4, fp32]))))
    (folder / "bench.json").write_text(json.dumps({"rows": [bench_row("fp32", 50.0, 1.0, 100.0),
                                                            bench_row("int4", decode, 2.0, ttft)]}))
    if record is not None:
        (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_identical_runs_compare_equal_and_timing_noise_is_not_a_regression(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=122.0, ttft=91.0)
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert result.passed and not result.params and all(v.change == "same" for v in result.verdicts)
    assert {t.judgement.judged for t in result.timings} == {"same, within noise"}  # 2 tok/s within 2 x hypot(2, 2)
    assert [row.run for row in result.summary] == ["a: a", "a: a", "b: b", "b: b"]
    # Both precisions pass their checks: the smaller one, int4, is recommended; fp32 lost on size.
    assert result.recommendations["a"] == ("Deploy int4 (40.0 MB, 120 tok/s, first token 90 ms at 16 prompt tokens, "
                                           "passes all 3 checks, INT4 recipe builder-default). fp32 lost: larger "
                                           "(100.0 MB against 40.0).")


def test_a_worse_verdict_or_quality_figure_is_a_regression_and_fails_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.70, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=64, int4_mb=38.5, top1=0.65, domain_ok=False, decode=100.0, ttft=90.0)
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert result.params == [compare.ParamChange("int4_block_size", 32, 64)]  # exactly the one difference
    assert result.verdicts[0] == compare.VerdictChange("int4", "domain", "capital", "pass", "FAIL",
                                                       "worse")  # changes first
    assert {r.split(":")[0] for r in result.regressions} == {"int4 domain/capital", "int4 top1_agreement"}
    assert [s.delta for s in result.sizes] == [0.0, -1.5]
    assert result.recommendations["b"].startswith("Deploy fp32 (100.0 MB") and "int4 lost: failed domain/capital" \
        in result.recommendations["b"]
    decode = next(t.judgement for t in result.timings if t.precision == "int4" and t.judgement.figure == "decode_tps")
    assert decode.judged == "slower" and decode.change_pct == pytest.approx(-16.7)
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 1
    out = capsys.readouterr().out
    assert "1 parameters differ, 1 of 4 verdicts changed" in out and "REGRESSION: int4 top1_agreement" in out
    assert "differs: parameter int4_block_size: 32 -> 64" in out  # named, not only counted
    page = (tmp_path / "c" / "compare.html").read_text()
    assert "FAIL: 2 regressions" in page and "int4_block_size" in page
    # Verdicts are marked in colour and in words; headings are words with units.
    assert '<td class="text bad">FAIL</td>' in page and '<td class="text bad">worse</td>' in page
    assert '<td class="text good">pass</td>' in page and "<th>size (MB)</th>" in page
    written = compare.read_comparison(tmp_path / "c" / "compare.json")
    assert written.passed is False and written == compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert codec.read(dict, tmp_path / "c" / "compare.json")[codec.VERSION_KEY] == compare.SCHEMA_VERSION == 3
    assert {row.figure for row in written.quality} == {"top1_agreement", "kl_divergence", "perplexity"}
    # A looser threshold lets the agreement drop pass; the verdict that got worse still fails it.
    loose = compare.compare_runs(compare.load_run(a), compare.load_run(b), fail_on={"top1_agreement": 0.1})
    assert [r.split(":")[0] for r in loose.regressions] == ["int4 domain/capital"]
    assert cli.main(["compare", str(a), str(b), "--out", str(tmp_path / "c2"), "--fail-on", "kl_divergence=0.1"]) == 1
    for spelling in ("kl_nats=0.1", "top1=0.1", "kl=0.1"):  # not a figure (FAIL_ON names each): a usage error
        assert cli.main(["compare", str(a), str(b), "--fail-on", spelling]) == 2
    with pytest.raises(InvalidOptionError, match="fail_on='top1'"):  # the API names the figure too
        compare.compare_runs(compare.load_run(a), compare.load_run(b), fail_on={"top1": 0.1})
    assert cli.main(["compare", str(a), str(b), "--fail-on", "top1=x"]) == 2
    assert cli.main(["compare", str(a), str(tmp_path / "nope")]) == 2


def test_a_quality_figure_one_run_lacks_is_not_judged_within_threshold(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    (b / "test.json").write_text(json.dumps(dump_report(ChecklistReport([ModelReport("m-fp32", [])]))))  # int4 not checked
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    int4 = [row for row in result.quality if row.precision == "int4"]
    assert int4 and {row.judged for row in int4} == {"only in a"}


def test_a_noisy_run_is_never_judged(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=60.0, ttft=90.0)
    bench = codec.read(BenchFile, b / "bench.json")
    codec.write(b / "bench.json", replace(bench, rows=(bench.rows[0], replace(bench.rows[1], noisy=True))))
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    decode = next(t.judgement for t in result.timings if t.precision == "int4" and t.judgement.figure == "decode_tps")
    assert decode.judged.startswith("a run is too noisy") and result.passed


def test_a_timing_measured_once_is_not_judged_and_the_headline_says_so(tmp_path: Path) -> None:
    # One repeat measures no spread (sd 0): a slower decode cannot be told "beyond the noise".
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=60.0, ttft=95.0)
    for run in (a, b):
        bench = codec.read(BenchFile, run / "bench.json")
        codec.write(run / "bench.json", replace(bench, rows=tuple(
            replace(row, repeats=1, decode_tps_sd=0.0, ttft_ms_sd=0.0) for row in bench.rows)))
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert {t.judgement.judged for t in result.timings} == {NOT_JUDGED} and not result.slower
    assert result.headline.startswith("PASS: ") and "4 timings are not judged" in result.headline


def test_a_rerun_on_another_cases_file_or_package_set_is_flagged(tiny_model: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    params = RunParams(model_dir=str(tiny_model), cases=str(cases))
    recorded = provenance.run_record(params, tiny_model)
    assert provenance.differences(recorded, provenance.run_record(params, tiny_model)) == []
    cases.write_text('{"messages": [{"role": "user", "content": "hello"}]}\n')
    now = provenance.run_record(params, tiny_model)
    changed = provenance.differences(recorded, now)
    assert len(changed) == 1 and changed[0].startswith("cases: ")
    now = replace(now, versions={**now.versions, "onnxruntime": "9.9.9"})
    assert any(line.startswith("onnxruntime: ") for line in provenance.differences(recorded, now))
    # A params.json edited after the run (by hand, as a rerun's input): each changed parameter is named.
    assert provenance.parameter_differences(recorded, provenance.run_record(params, tiny_model)) == []
    edited = provenance.run_record(RunParams(model_dir=str(tiny_model), cases=str(cases), precisions=["int8", "fp32"]), tiny_model)
    assert provenance.parameter_differences(recorded, edited) == [
        "parameter precisions: ['fp32', 'int8', 'int4'] then, ['int8', 'fp32'] now"]
    assert provenance.parameter_differences(provenance.RunRecord(), edited) == []  # recorded before parameters were kept
    assert set(recorded.machine) >= {"cpu", "logical_cpus", "physical_cores", "memory_gb", "caches"}


def test_recommend_names_the_smallest_passing_precision_and_why_the_others_lost(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=False, decode=120.0, ttft=90.0)
    assert cli.main(["recommend", str(run)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Deploy fp32 (100.0 MB, 50 tok/s, first token 100 ms at 16 prompt tokens, passes all 1 checks)")
    assert "int4 lost: failed domain/capital" in line and len(line.splitlines()) == 1
    assert cli.main(["recommend", str(run), "--json"]) == 0
    decision = codec.load(deployment_choice.Recommendation, json.loads(capsys.readouterr().out))
    assert decision.choice == "fp32"
    assert {r.precision: r.verdict for r in decision.rows} == {
        "fp32": "recommended", "int4": "lost: failed domain/capital"}
    # Every precision failing a check: nothing to deploy, and the command says so with exit 1.
    tests = read_report(run / "test.json")
    failing = [replace(m, checks=[replace(c, verdict=Verdict.FAIL) for c in m.checks]) for m in tests.models]
    (run / "test.json").write_text(json.dumps(dump_report(replace(tests, models=failing))))
    assert cli.main(["recommend", str(run)]) == 1
    assert capsys.readouterr().out.startswith("Nothing to deploy: every precision failed a check")
    assert cli.main(["recommend", str(tmp_path / "nope")]) == 2


def test_the_story_is_generated_from_the_figures(tmp_path: Path) -> None:
    from slmops.toolkit.presentation import report

    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=False, decode=120.0, ttft=90.0)
    bench_json = {"metadata": {"memory_bandwidth_gbs": 40.0}, "noisy": ["a", "b"],
                  "decode_ceiling": [{"engine": "foundry-local", "percent_of_ceiling": p} for p in (30.0, 60.0)],
                  "engine_ratios": [{"ratio": 1.02}],
                  "ttft_breakdown": [{"ratio": 1.01, "setup_ms": 0.3, "template_ms": 1.4, "runtime_other_ms": 2.0}]}
    registered = [RegisteredModel("r-int8", "r-int8:1", "int8", threads=2, threads_speedup=1.4),
                  RegisteredModel("r-int4", "r-int4:1", "int4", threads=2, threads_speedup=1.3)]
    story = report.run_story(deployment_choice.recommend(compare.load_run(run)), codec.load(BenchFile, bench_json),
                             registered)
    assert story[0] == "Against FP32: int4 is 0.40x the size and decodes 2.40x as fast."
    assert story[1] == "fp32 pass every checklist item; int4 failed domain/capital."
    # A build that misses checks every build misses is never said to pass every item (the demo's story said so).
    missing = [PrecisionOutcome(PrecisionFigures("", "fp32", checks_passed="94/105"), outcome=Outcome.LARGER),
               PrecisionOutcome(PrecisionFigures("", "int4", checks_passed="99/107"), outcome=Outcome.RECOMMENDED)]
    assert "pass every checklist item" not in report._checks_sentence(missing)
    assert "fp32 94/105, int4 99/107 passed" in report._checks_sentence(missing)
    assert "1.30-1.40x the runtime's default" in story[2] and "30-60% of the memory-bandwidth bound" in story[3]
    assert "1.02x ONNX Runtime GenAI" in story[4] and "session 0.30 ms" in story[5] and story[6].startswith("2 bench")
    assert report.run_story(None, None, None) == []
    control = ControlResult("base", 0, 16, 1, 16, 0.0, 0.1, True)
    told = report.run_story(deployment_choice.recommend(compare.load_run(run)), None, None, control)
    assert told[2] == ("The base model, not fine-tuned, answers 0/16 of the trained questions and 1/16 of their "
                       "held-out paraphrases: the base model passes 0% of the domain cases (at most 10%): they test "
                       "what the fine-tune added.")
    alone = report.run_story(None, None, None, ControlResult("base", 1, 8, 0, 0, 0.125, 0.1, False))
    assert alone[0].startswith("The base model, not fine-tuned, answers 1/8 of the trained questions: ")  # no "0/0"


def test_a_run_folder_from_before_schema_versions_still_loads_and_renders(tmp_path: Path) -> None:
    from slmops.toolkit.core.codec import ResultVersionError
    from slmops.toolkit.presentation import checklist_tables, report
    from slmops.toolkit.stages.checklist import read_report

    run = write_run(tmp_path / "old", block=32, int4_mb=40.0, top1=0.7, domain_ok=False, decode=120.0, ttft=90.0)
    # test.json as the toolkit wrote it before schema_version: every figure inside a sentence.
    old = {"passed": False, "thresholds": {"domain_pass_rate": 0.8, "timing_rounds": [3, 7]},
           "summary": {"m-int4": {"passed": 0, "total": 2, "failed": ["domain/capital", "domain/domain-overall"],
                                  "inconclusive": [], "rates": {"domain": "0/1 = 0%"}, "requests": 1, "seconds": {}}},
           "checks": [{"model": "m-int4", "check": "domain", "case": "capital", "threshold": "contains any of [Paris]",
                       "value": "score 0.00: Lyon", "passed": False, "inconclusive": False, "verdict": "fail"},
                      {"model": "m-int4", "check": "domain", "case": "domain-overall", "threshold": ">= 80% of cases pass",
                       "value": "0/1 = 0%", "passed": False},
                      {"model": "m-fp32", "check": "edge", "case": "unicode", "threshold": "t",
                       "value": "answered (3 tokens, length) in 0.10 s", "passed": True}],
           "series": {"m-int4": {"rss_mb": [300.0, 301.5], "ms_per_token": {"64": 2.0}, "seed": 0, "generated": []}},
           "control": {"model": "base", "trained": "0/16", "heldout": "1/16", "verdict": "words"}, "timestamp": "t"}
    (run / "test.json").write_text(json.dumps(old))
    loaded = read_report(run / "test.json")
    assert loaded.schema_version == 1 and not loaded.passed and loaded.thresholds.timing_rounds == (3, 7)
    assert [str(c.verdict) for c in loaded.checks] == ["fail", "fail", "pass"] and loaded.checks[0].value is None
    assert loaded.checks[0].detail == "score 0.00: Lyon" and loaded.models[0].rss_mib == [300.0, 301.5]
    assert loaded.models[0].ms_per_token == {64: 2.0} and loaded.control is None  # its words are not re-read
    assert checklist_tables.summary_rows(loaded)[0]["domain"] == "0/1 = 0%"  # shown as it was written
    assert deployment_choice.recommend(compare.load_run(run)).choice == "fp32"  # the old verdicts still decide
    for thin in ("models/convert.json", "bench.json"):  # this fixture's are too thin for the page's tables
        (run / thin).unlink()
    page = report.write_index(run).read_text()
    assert "<h2>Quality checklist</h2>" in page and "0/1 = 0%" in page
    # A file from a newer toolkit is refused in one line that names its version.
    (run / "test.json").write_text(json.dumps({"schema_version": 99, "checks": []}))
    with pytest.raises(ResultVersionError, match="schema_version 99") as refused:
        read_report(run / "test.json")
    assert "\n" not in str(refused.value)
    assert cli.main(["recommend", str(run)]) == 2


def test_a_run_folder_with_the_old_unit_and_agreement_names_still_loads_and_renders(tmp_path: Path) -> None:
    """Memory under ``_mb`` names (test.json version 2) and ``top1``/``kl`` (recipes.json version 1)."""
    from slmops.toolkit.core.codec import ResultVersionError
    from slmops.toolkit.domain.results.conversion import Manifest, read_conversions
    from slmops.toolkit.domain.results.recipes import read_recipes
    from slmops.toolkit.presentation import report
    from slmops.toolkit.stages.checklist import read_report

    run = write_run(tmp_path / "old", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    (run / "bench.json").unlink()  # this fixture's is too thin for the page's tables
    check = {"schema_version": 2, "build": "int4", "reference": "transformers 4.57.1 (float32)",
             "sequences": [{"what": "the reference text", "positions": 430}], "positions": 430,
             "top1_agreement": 0.998, "max_abs_diff": 0.02, "mean_abs_diff": 0.002, "logit_range": 20.0,
             "max_diff_of_range": 0.001, "kl_divergence": 0.0004, "top1_up_to_ties": 0.998,
             "tolerance": {"min_top1": 0.25, "max_diff_of_range": None, "max_kl": 1.5}, "verdict": "pass"}

    def manifest(precision: str, size: float, peak: float) -> dict:
        return {"schema_version": 3, "precision": precision, "method": "builder", "size_mb": size,
                "size_ratio_vs_fp32": size / 100.0, "tutorial_size_ratio": 1.0, "size_vs_tutorial": 1.0,
                "weights": {"lm_head": "fp32", "embeddings": "fp32"}, "wall_s": 3.0, "peak_rss_mib": peak,
                "memory": {"predicted_peak_mib": 2345.6, "measured_peak_mib": peak, "available_mib_at_start": 9000.0},
                "parity": {"verdict": "pass", "checks": [check]}}

    (run / "models" / "convert.json").write_text(json.dumps([manifest("fp32", 100.0, 1234.5),
                                                             manifest("int4", 40.0, 876.5)]))
    tests = json.loads((run / "test.json").read_text())
    tests["schema_version"] = 2
    tests["thresholds"]["leak_mb_per_100"] = 7.5
    del tests["thresholds"]["leak_mib_per_100"]
    (run / "test.json").write_text(json.dumps(tests))
    (run / "models" / "recipes").mkdir()
    (run / "models" / "recipes" / "recipes.json").write_text(json.dumps([
        {"recipe": "int8-head", "note": "n", "output_dir": "d", "size_mb": 30.0, "size_ratio_vs_fp32": 0.3,
         "top1": 0.8765, "kl": 0.0432, "perplexity": 12.0, "reference_perplexity": 11.0, "decode_tps": 99.0,
         "kl_to_base": 0.2, "moved_toward_base": False, "pass_rate": None}]))

    assert [m.peak_rss_mib for m in read_conversions(run / "models" / "convert.json")] == [1234.5, 876.5]
    assert read_report(run / "test.json").thresholds.leak_mib_per_100 == 7.5
    (recipe,) = read_recipes(run / "models" / "recipes" / "recipes.json")
    assert (recipe.top1_agreement, recipe.kl_divergence, recipe.kl_divergence_to_base) == (0.8765, 0.0432, 0.2)
    assert [q.top1_agreement for q in compare.load_run(run).quality.values()] == [0.7]
    page = report.write_index(run).read_text()
    conversion = page.split("<th>predicted peak (MiB)</th>")[1].split("</table>")[0]  # the conversion table
    assert all(f'<td class="num">{n}</td>' in conversion for n in (1234, 876, 2346))
    recipes = page.split('<td class="text">int8-head</td>')[1].split("</tr>")[0]  # the recipes table, old names
    assert '<td class="num">0.88</td><td class="num">0.0432</td>' in recipes and "<th>top-1 vs FP32</th><th>KL (nats)</th>" in page
    # A file from a newer toolkit is refused in one line that names its version.
    newer = Manifest.SCHEMA_VERSION + 1
    (run / "models" / "convert.json").write_text(json.dumps([{**manifest("fp32", 100.0, 1.0), "schema_version": newer}]))
    with pytest.raises(ResultVersionError, match=f"schema_version {newer}"):
        read_conversions(run / "models" / "convert.json")
    (run / "models" / "recipes" / "recipes.json").write_text(json.dumps({"schema_version": 5, "recipes": []}))
    with pytest.raises(ResultVersionError, match="schema_version 5"):
        read_recipes(run / "models" / "recipes" / "recipes.json")


def test_the_report_keeps_the_versions_the_run_ran_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.toolkit.presentation import report

    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0,
                    record={"versions": {"onnxruntime": "1.0.0"}})
    for thin in ("models/convert.json", "bench.json"):  # this fixture's are too thin for the page's tables
        (run / thin).unlink()
    monkeypatch.setattr(report, "versions", lambda: {"onnxruntime": "9.9.9"})  # an upgrade since the run
    page = report.write_index(run).read_text()
    assert json.loads((run / "versions.json").read_text()) == {"onnxruntime": "1.0.0"}
    assert "1.0.0" in page and "9.9.9" not in page


def test_runs_line_up_by_the_precision_each_model_was_registered_at(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=False, decode=120.0, ttft=90.0)
    (run / "bench.json").unlink()
    # Names that say nothing about their precision: registered.json does.
    tests = json.loads((run / "test.json").read_text())
    for check in tests["checks"]:
        check["model"] = {"m-int4": "small", "m-fp32": "big"}[check["model"]]
    tests["quality"] = {"small": tests["quality"]["m-int4"]}
    (run / "test.json").write_text(json.dumps(tests))
    write_registered(run / "registered.json", [RegisteredModel("big", "big:1", "fp32"),
                                               RegisteredModel("small", "small:1", "int4")])
    loaded = compare.load_run(run)
    assert {p for p, _, _ in loaded.verdicts} == {"fp32", "int4"} and loaded.quality["int4"].top1_agreement == 0.7
    assert [m.precision for m in read_registered(run / "registered.json")] == ["fp32", "int4"]


def test_test_and_bench_take_their_models_from_the_runs_registration(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "-o", str(tmp_path)]) == 2  # nothing named and nothing registered: said, not guessed
    assert "registered.json" in capsys.readouterr().err
    write_registered(tmp_path / "registered.json", [RegisteredModel("picked-int8", "picked-int8:1", "int8")])
    assert cli.main(["bench", "-o", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "picked-int8" in capsys.readouterr().err  # the registered model was asked for (and is not in this cache)


def test_a_miss_every_precision_shares_is_the_models_own_and_disqualifies_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.99, domain_ok=True, decode=120.0, ttft=90.0)
    report = json.loads((run / "test.json").read_text())
    reports = load_report(report)

    def miss(model: str, case: str) -> CheckResult:
        return CheckResult(model, Check.HELDOUT, case, 0.0, Unit.SHARE, 0.5, Bound.AT_LEAST, Verdict.FAIL, "t")

    for model in reports.models:
        model.checks.append(miss(model.model, "language"))  # both fail the same held-out paraphrase
    (run / "test.json").write_text(json.dumps(dump_report(reports)))
    decision = deployment_choice.recommend(compare.load_run(run))
    assert decision.choice == "int4"  # the smaller one: the shared miss tells them apart no more
    assert "Every build, FP32 included, fails heldout/language" in decision.sentence
    # A miss of INT4 alone on one case is no loss of precision: the paired test over the held-out cases
    # cannot tell one case from chance (McNemar's exact test p = 1), so it decides nothing.
    reports.models[0].checks.append(miss("m-int4", "currency"))
    reports.models[1].checks.append(replace(miss("m-fp32", "currency"), value=1.0, verdict=Verdict.PASS))
    (run / "test.json").write_text(json.dumps(dump_report(reports)))
    decision = deployment_choice.recommend(compare.load_run(run))
    assert decision.choice == "int4" and decision.failed == {}
    assert "int4 heldout: 0/2 against fp32's 1/2; 1 cases only fp32 passes, 0 only int4 (McNemar's exact test " \
        "p = 1.00): no difference" in decision.sentence


def test_a_compare_json_and_a_recommendation_of_the_flat_row_versions_read_as_today_s(tmp_path: Path) -> None:
    """compare.json version 2 (each timing's judgement in the row itself) and the recommendation of version 1 (each
    row's figures in the row itself), as f19f3fa wrote them for these two runs, read as what the runs give today."""
    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=64, int4_mb=38.0, top1=0.6, domain_ok=False, decode=90.0, ttft=140.0)
    old = compare.read_comparison(Path(__file__).parent / "compare_v2.json")
    now = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    assert old.timings == now.timings and old.summary == now.summary and old.headline == now.headline
    assert old.timings[0].judgement.noise == 2.83 and old.slower == now.slower != []
    compare.write_comparison(old, tmp_path / "again")
    written = json.loads((tmp_path / "again" / "compare.json").read_text())
    assert written["schema_version"] == 3 and written["timings"][0]["judgement"]["judged"] == "same, within noise"
    flat = json.loads((Path(__file__).parent / "recommendation_v1.json").read_text())
    decision = codec.load(deployment_choice.Recommendation, flat)
    assert decision == deployment_choice.recommend(compare.load_run(b))
    assert decision.rows[1].figures.size_mb == 38.0 and decision.rows[1].precision == "int4"
    assert codec.dump(decision)["schema_version"] == 2
