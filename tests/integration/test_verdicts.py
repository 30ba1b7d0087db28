"""Checklist verdicts that hold run to run on real models: the same requests and lengths each run, the same
verdicts in five runs, the deployed runtime benchmarked over the tokens asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.domain.options import Precision
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.runtimes.foundry_session import local_catalog
from slmops.toolkit.stages import bench, checklist, register
from slmops.toolkit.stages.convert import convert
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_catalog import list_models
from tests.scripted_models import make_scripted_model


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A scripted fine-tune that answers in two tokens and ends its turn, registered at FP32."""
    work = tmp_path_factory.mktemp("terse")
    built = convert(ConvertSpec(make_scripted_model(work / "hf"), work / "fp32", Precision.FP32),
                    progress=False).output_dir
    return register.register(built, "terse-fp32", force=True).name


def test_a_terse_fine_tune_is_benchmarked_over_the_asked_tokens(scripted: str, tmp_path: Path) -> None:
    with foundry.LoadedModel(scripted) as model:
        assert model.generate([{"role": "user", "content": "Hi"}], max_tokens=24).completion_tokens < 4
    rows = bench.bench([scripted], prompt_lengths=[16, 64], gen_lengths=[24], repeats=2, warmup=0, progress=False)
    assert [r.gen_tokens for r in rows if r.engine == "foundry-local"] == [24, 24]
    report = bench.write_results(rows, tmp_path)
    assert [(r.target_prompt_tokens, r.ratio > 0) for r in report.engine_ratios] == [(16, True), (64, True)]
    assert report.short == () and {r.engine for r in report.decode_ceiling} == {"foundry-local", "ort-genai"}
    assert "avx2" in report.metadata.isa
    # The fixed-length registration is gone: nothing left in the catalog or the cache's listing.
    assert [m.id for m in local_catalog().list_models() if foundry.FIXED_LENGTH_SUFFIX in m.id] == []
    assert scripted in {row.name for row in list_models()}


def test_the_checklist_sends_the_same_requests_and_gets_the_same_lengths_run_to_run(scripted: str) -> None:
    cases = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}?"}],
              "expect": {"contains_any": ["Hello"]}} for i in range(3)]
    runs = [checklist.run_checklists([scripted], cases=cases, requests=20, lengths=[16, 64], progress=False)[0]
            for _ in range(2)]
    assert runs[0].generated == runs[1].generated and runs[0].generated[0][1:] == ["stop", 2]
    (perf,) = [c for c in runs[0].checks if c.check == "performance"]
    assert "medians of" in perf.detail and sorted(runs[0].ms_per_token) == [16, 64]
    assert all(r.requests >= 3 + 20 + 2 * 3 for r in runs)  # cases, memory, three interleaved rounds at least


def test_a_case_longer_than_the_context_is_refused_by_name_before_any_is_asked(
        scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One over-long case used to stop the checklist after the cases before it, naming no case."""
    from slmops.toolkit import cli

    cases = tmp_path / "cases.jsonl"
    short = {"id": "short", "messages": [{"role": "user", "content": "Say hi"}], "expect": {"contains": ["hello"]}}
    long = {"id": "too-long", "messages": [{"role": "user", "content": "The quick brown fox. " * 200}],
            "expect": {"contains": ["fox"]}}
    cases.write_text("\n".join(json.dumps(c) for c in (short, long)) + "\n")
    out = tmp_path / "run"
    argv = ["test", scripted, "--cases", str(cases), "--reference", "none", "--requests", "0", "--lengths",
            "-o", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Case 'too-long' does not fit terse-fp32" in err and "512-token context" in err
    assert "cases:" not in err  # refused before the first case was asked
    assert not (out / "test.json").exists()


@pytest.fixture(scope="module")
def tiny_pair(tiny_fp32: Path, tiny_int4: Path) -> list[str]:
    """The tiny model's FP32 and INT4 builds (the session's), registered."""
    return [register.register(built, f"verdict-{precision}", force=True).name
            for precision, built in ((Precision.FP32, tiny_fp32), (Precision.INT4, tiny_int4))]


@pytest.mark.slow
def test_the_same_models_get_the_same_verdicts_in_five_runs(tiny_pair: list[str]) -> None:
    runs = []
    for _ in range(5):
        reports = checklist.run_checklists(tiny_pair, reference=tiny_pair[0], requests=40, progress=False)
        runs.append([(c.model, c.check, c.case, c.passed) for r in reports for c in r.checks])
    assert all(run == runs[0] for run in runs[1:]), [
        [v for v, w in zip(run, runs[0], strict=True) if v != w] for run in runs[1:]]
    assert len(runs[0]) > 20
