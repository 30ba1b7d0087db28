"""Verdicts against targets and the paired test: McNemar's exact p-values, and a recommendation that a case or two cannot sway."""

from __future__ import annotations

import math

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.domain import deployment_choice
from slmops.toolkit.domain.results.bench import BenchRow
from slmops.toolkit.domain.verdicts import (
    PAIRED_TEST,
    TOP1_TARGET,
    Difference,
    Status,
    family_comparisons,
    mcnemar_exact,
    paired,
    status_at_least,
)
from slmops.toolkit.presentation import compare


@pytest.mark.parametrize(("b", "c", "p"), [
    (0, 2, 0.5), (2, 0, 0.5), (0, 0, 1.0), (1, 1, 1.0), (0, 5, 0.0625), (0, 6, 0.03125),
    (1, 9, 2 * 11 / 1024), (3, 12, 2 * (1 + 15 + 105 + 455) / 2 ** 15),
])
def test_mcnemar_exact_gives_the_binomial_p_values(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p)


def test_mcnemar_exact_is_symmetric_capped_at_one_and_refuses_negative_counts() -> None:
    assert all(mcnemar_exact(b, c) == mcnemar_exact(c, b) <= 1.0 for b in range(8) for c in range(8))
    assert math.isclose(mcnemar_exact(10, 10), 1.0)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 2)


def test_a_paired_comparison_counts_only_cases_both_builds_were_asked() -> None:
    result = paired("domain", "fp32", "int4", {"a": True, "b": True, "c": False, "d": True},
                    {"a": True, "b": False, "c": True, "e": False})
    assert (result.both, result.reference_only, result.candidate_only, result.neither) == (1, 1, 1, 0)
    assert result.cases == 3 and result.difference is Difference.NONE
    six = paired("domain", "fp32", "int4", {str(i): True for i in range(6)}, {str(i): False for i in range(6)})
    assert six.p_value == pytest.approx(0.03125) and six.difference is Difference.WORSE
    assert "McNemar's exact test p = 0.03" in six.words() and six.difference is Difference.WORSE
    assert codec.dump(six)["difference"] == "worse" and codec.dump(six)["test"] == PAIRED_TEST  # as files hold it


def test_statuses_are_pass_warn_or_fail_against_the_target() -> None:
    assert status_at_least(0.9, 0.85, floor=0.25) is Status.PASS
    assert status_at_least(0.66, 0.85, floor=0.25) is Status.WARN
    assert status_at_least(0.2, 0.85, floor=0.25) is Status.FAIL
    assert status_at_least(0.66, 0.85) is Status.FAIL


def _run(int4_passes: dict[str, bool], fp32_passes: dict[str, bool], family: str = "tool_call_heldout"
         ) -> deployment_choice.RunFigures:
    """FP32 (larger) and INT4 (smaller), equally fast, their only differences in one case family."""
    verdicts: dict[tuple[str, str, str], str] = {}
    for precision, passes in (("fp32", fp32_passes), ("int4", int4_passes)):
        for case, ok in passes.items():
            verdicts[(precision, family, case)] = "pass" if ok else "fail"
        share = sum(passes.values()) / len(passes)
        verdicts[(precision, family, f"{family}-overall")] = "pass" if share >= 0.5 else "fail"
        verdicts[(precision, "edge", "unicode")] = "pass"
    rows = {p: BenchRow(precision=p, target_prompt_tokens=128, target_gen_tokens=32, ttft_ms=100.0, decode_tps=100.0,
                        engine="foundry-local") for p in ("fp32", "int4")}
    return deployment_choice.RunFigures("run", sizes={"fp32": 500.0, "int4": 150.0}, verdicts=verdicts, headline=rows,
                              first_token=rows)


def test_fp32_is_never_lost_to_two_cases_int4_passed_and_the_test_is_named() -> None:
    fp32 = {"h1": False, "h2": False, "h3": True, "h4": True}
    int4 = {"h1": True, "h2": True, "h3": True, "h4": True}
    decision = deployment_choice.recommend(_run(int4, fp32))
    verdicts = {r.precision: r.verdict for r in decision.rows}
    assert decision.choice == "int4" and verdicts["fp32"].startswith("lost: larger")
    assert "failed" not in verdicts["fp32"]
    assert "McNemar's exact test p = 0.50): no difference" in decision.sentence
    (comparison,) = decision.paired
    assert (comparison.candidate, comparison.reference_only, comparison.candidate_only,
            comparison.p_value) == ("int4", 0, 2, 0.5)


def test_two_cases_int4_missed_do_not_sink_it_but_a_difference_beyond_chance_does() -> None:
    ten = [f"d{i}" for i in range(10)]
    two_missed = deployment_choice.recommend(_run({c: c not in ("d0", "d1") for c in ten}, dict.fromkeys(ten, True), "domain"))
    assert two_missed.choice == "int4" and "p = 0.50): no difference" in two_missed.sentence
    seven_missed = deployment_choice.recommend(_run({c: c > "d6" for c in ten}, dict.fromkeys(ten, True), "domain"))
    int4 = next(r for r in seven_missed.rows if r.precision == "int4")
    assert seven_missed.choice == "fp32" and int4.outcome == "failed"
    assert "worse than fp32 on domain (7 cases only fp32 passes, 0 only int4; McNemar's exact test p = 0.016)" \
        in int4.verdict


def test_family_comparisons_leave_out_pass_rates_and_builds_without_the_reference() -> None:
    verdicts = {("fp32", "domain", "a"): "pass", ("fp32", "domain", "domain-overall"): "pass",
                ("int4", "domain", "a"): "fail", ("int4", "domain", "domain-overall"): "fail",
                ("int4", "edge", "empty"): "fail"}
    (only,) = family_comparisons(verdicts)["int4"]
    assert only.family == "domain" and only.cases == 1 and only.reference_only == 1
    assert family_comparisons({("int4", "domain", "a"): "pass"}) == {}


def _parity_folder(folder, top1: float, verdict: str = "pass"):
    import json

    from slmops.toolkit.core import codec
    from slmops.toolkit.domain import parity

    figures = parity.Figures(positions=200, top1_agreement=top1, max_abs_diff=1.0, mean_abs_diff=0.1,
                             logit_range=20.0, kl_divergence=0.3)
    check = parity.judge("int4", "transformers fp32", [("text", 200)], [figures], parity.QUANTIZED)
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"parity": {"verdict": verdict, "checks": [codec.dump(check)]}}))
    return folder


def test_doctor_warns_below_its_target_and_never_calls_it_ok(tmp_path) -> None:
    from slmops.toolkit.orchestration import doctor

    low = doctor.parity_check(_parity_folder(tmp_path / "low", 0.66))
    assert low.status is Status.WARN and low.ok  # usable, short of the target, and the target is stated
    assert f"below the target: top-1 agreement >= {TOP1_TARGET}" in low.detail
    high = doctor.parity_check(_parity_folder(tmp_path / "high", 0.97))
    assert high.status is Status.PASS and f">= {TOP1_TARGET}" in high.detail
    refused = doctor.parity_check(_parity_folder(tmp_path / "refused", 0.97, verdict="fail"))
    assert refused.status is Status.FAIL and not refused.ok
    assert doctor.parity_check(tmp_path).status is Status.WARN  # no record: not checked is no pass


def test_doctor_prints_each_status_by_name(tmp_path, monkeypatch, capsys) -> None:
    from slmops.toolkit import cli
    from slmops.toolkit.orchestration import doctor

    checks = [doctor.Check("parity", Status.WARN, "int4 pass: top-1 agreement 0.66"),
              doctor.Check("web service", Status.WARN, "chat answered 404"),
              doctor.Check("model files", Status.PASS, "complete")]
    monkeypatch.setattr(doctor, "diagnose", lambda folder, load=True: checks)
    assert cli.main(["doctor", str(tmp_path), "--no-load"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["WARN", "WARN", "PASS"] and not any("ok" in line.split()[0]
                                                                                       for line in lines)
    checks.append(doctor.Check("links", Status.FAIL, "outside"))
    assert cli.main(["doctor", str(tmp_path), "--no-load"]) == 1


def test_the_comparison_headline_agrees_with_its_timing_table(tmp_path) -> None:
    import html

    from tests.unit.test_compare import write_run

    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=88.0, ttft=90.0)
    result = compare.compare_runs(compare.load_run(a), compare.load_run(b))
    decode = next(t.judgement for t in result.timings if t.precision == "int4" and t.judgement.figure == "decode_tps")
    assert decode.judged == "slower" and result.passed  # not gated on, but never headlined as fine
    assert result.status is Status.WARN and result.headline.startswith("WARN: ")
    assert "int4 foundry-local decode_tps 120 -> 88 (-26.7%" in result.headline
    assert "No regression" not in result.headline
    page = compare.write_comparison(result, tmp_path / "c")
    assert result.headline in html.unescape(page.read_text())
    assert compare.read_comparison(tmp_path / "c" / "compare.json").status is Status.WARN
    same = compare.compare_runs(compare.load_run(a), compare.load_run(a))
    assert same.status is Status.PASS and same.headline.startswith("PASS: ")


def test_the_run_deploys_the_recipe_its_comparison_recommends(tmp_path) -> None:
    import json

    from slmops.toolkit.domain.results.conversion import read_conversions
    from slmops.toolkit.domain.results.recipes import RecipeResult
    from slmops.toolkit.orchestration import recipes

    models = tmp_path / "models"
    for folder, recipe, weights in ((models / "int4", "builder-default", b"default"),
                                    (models / "recipes" / "mixed", "mixed", b"mixed!")):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(weights)
        (folder / "manifest.json").write_text(json.dumps({"precision": "int4", "size_mb": len(weights) / 1e6}))
    (models / "convert.json").write_text(json.dumps([{"precision": "fp32", "size_mb": 1.0},
                                                     {"precision": "int4", "size_mb": 7e-6}]))

    def result(name: str, folder, top1: float, refused: str = "") -> RecipeResult:
        return RecipeResult(name, "", str(folder), 0.2, 0.3, top1, 0.1, 10.0, 9.0, 100.0, refused=refused)

    measured = [result("builder-default", models / "int4", 0.66), result("mixed", models / "recipes" / "mixed", 0.9),
                result("hqq", "", 0.1, refused="gate")]
    said = recipes.adopt_recipe(measured, "mixed", models)
    assert "deploys INT4 recipe `mixed`" in said and "int4_recipe" in said
    assert (models / "int4" / "model.onnx").read_bytes() == b"mixed!"  # the measured build itself, not a rebuild
    int4 = next(m for m in read_conversions(models / "convert.json") if m.precision == "int4")
    assert int4.recipe == "mixed" and int4.output_dir == str(models / "int4")
    assert compare.load_run(tmp_path).int4_recipe == "mixed"
    with pytest.raises(Exception, match="hqq"):
        recipes.adopt_recipe(measured, "hqq", models)  # refused by the parity gate: never deployed


def test_the_picker_shows_a_built_int4s_measured_size_and_its_status_against_the_target() -> None:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.domain.results.deployment import PrecisionFigures
    from slmops.widgets import pickers

    measured = {"int4": PrecisionFigures("", "int4", size_mb=203.3, x_fp32=0.376, top1_agreement=0.66),
                "int8": PrecisionFigures("", "int8", size_mb=157.3, x_fp32=0.291, top1_agreement=0.97)}
    page = pickers.tradeoff_table((Precision.INT8, Precision.INT4, Precision.FP16), measured)
    int4 = next(row for row in page.split("<tr>") if ">int4</td>" in row)
    assert "×0.376 measured (tutorial ×0.125)" in int4 and "start here" not in int4
    assert "warn: top-1 agreement 0.660 against a target of &gt;= 0.85" in int4
    assert "pass: top-1 agreement 0.970" in next(row for row in page.split("<tr>") if ">int8</td>" in row)
    fp16 = next(row for row in page.split("<tr>") if ">fp16</td>" in row)
    assert "×0.5 (tutorial)" in fp16 and "expected:" in fp16  # not built yet: the tutorial's expectation, said so
    # The options keep the tutorial's expectation, said to be the tutorial's (relabelling them in the browser could
    # clear the user's selection); the measured figures are the table's.
    assert pickers.precision_label(Precision.INT4).startswith("int4: tutorial ×0.125")
