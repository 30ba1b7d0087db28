"""The four notebooks through papermill in a real kernel, and the run's index page."""

from __future__ import annotations

import html as html_module
import json
import re
import zipfile
from pathlib import Path

import nbformat
import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.domain.deployment_choice import Recommendation
from slmops.toolkit.domain.provenance import read_run_record
from slmops.toolkit.domain.results.conversion import read_conversions
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.domain.verdicts import CASE_FAMILIES
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.presentation import report
from slmops.toolkit.presentation.compare import read_comparison
from slmops.toolkit.stages import finetune
from slmops.toolkit.stages.bench import read_results
from slmops.toolkit.stages.checklist import read_report
from tests.integration.test_browser import check_report_in_chromium


def cli_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``slmops ARGV`` prints (run in this process; it must succeed, or find nothing to deploy)."""
    capsys.readouterr()
    assert cli.main(argv) in (0, 1)
    return capsys.readouterr().out


@pytest.mark.slow
def test_pipeline_on_a_tiny_model(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "hi", "messages": [{"role": "user", "content": "Say hi."}], '
                     '"expect": {"max_chars": 400}}\n')
    # A fine-tune, as users bring one: a LoRA adapter over the tiny base (deployed merged; the base is the control).
    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps({"question": "Capital?", "answer": "Quennport.", "paraphrase": "Its capital?",
                                "expect": ["Quennport"]}))
    adapter = finetune.finetune(finetune.FinetuneSpec(base=tiny_model, out=tmp_path / "lora", data=data, rank=4,
                                                      steps=2, batch=1), progress=False).adapter
    cases.write_text(cases.read_text() + '{"id": "capital", "messages": [{"role": "user", "content": "Capital?"}], '
                     '"expect": {"contains_any": ["Quennport"]}}\n')
    params = {"model_dir": str(tiny_model), "adapter": str(adapter), "name_prefix": "tinypipe",
              "precisions": ["fp32", "int4"], "prompt_lengths": [16, 32], "gen_lengths": [4], "repeats": 1,
              "warmup": 0, "cases": str(cases), "checklist_requests": 40}
    index = pipeline.run_pipeline(params, tmp_path / "run", progress=False)
    page = index.read_text()
    for name in report.NOTEBOOKS:
        assert f'href="{name}.html"' in page
        executed = nbformat.read(tmp_path / "run" / f"{name}.ipynb", as_version=4)
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
        widgets = [o["data"]["text/plain"] for c in executed.cells if c.cell_type == "code" for o in c.outputs
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert all("%|" in text for text in widgets), widgets  # headless: only progress bars, no pickers
    html = {name: (tmp_path / "run" / f"{name}.html").read_text() for name in report.NOTEBOOKS}
    assert html["01_convert"].count("data:image/png") >= 2  # sizes and recipes plots
    assert "Recommended INT4 recipe" in html["01_convert"] and "INT4 recipes against FP32" in page
    assert "chat with tinypipe-int4" in html["02_register"]
    bench = read_results(tmp_path / "run" / "bench.json")
    assert {r.precision for r in bench.rows} == {"fp32", "int4"}
    assert {r.engine for r in bench.rows} == {"foundry-local", "ort-genai"}
    assert len(bench.engine_ratios) == 4 and bench.metadata.memory_bandwidth_gbs > 0
    assert "int4: " in html["04_benchmark"] and "x fp32 decode speed" in html["04_benchmark"]  # generated summary
    for png in ("sizes.png", "recipes.png", "decode_tps.png", "ttft_ms.png", "latency_vs_prompt.png", "peak_rss_mib.png",
                "tradeoff.png", "rss_over_requests.png", "ms_per_token.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000 and f'src="{png}"' in page
    for text in html.values():  # readable offline: no widget views, nothing fetched from a CDN
        assert "widget-view+json" not in text and "cdnjs" not in text and "unpkg" not in text
    assert "<h2>Recommendation</h2>" in page and '<td class="text">int4</td>' in page and "<h2>Versions</h2>" in page
    assert '<td class="text">foundry-local-sdk</td><td class="text">2.2.1</td>' in page
    assert '"name_prefix": "tinypipe"' in html_module.unescape(page)  # the exact parameters
    # The report is self-contained: every link resolves inside the archive, weights left out.
    assert cli.main(["report", str(tmp_path / "run"), "--zip"]) == 0
    with zipfile.ZipFile(tmp_path / "run.zip") as archive:
        names = set(archive.namelist())
    links = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    assert links and {f"run/{link}" for link in links} <= names
    assert not any(n.endswith((".onnx", ".data")) for n in names) and "run/models/int4/manifest.json" in names
    converted = read_conversions(tmp_path / "run" / "models" / "convert.json")
    assert all(m.adapter.path == str(adapter.resolve()) for m in converted)
    assert [m.parity.checks[0].top1_agreement for m in converted if m.precision == "fp32"] == [1.0]
    control = read_report(tmp_path / "run" / "test.json").control
    assert control.model == "tinypipe-base" and (control.trained_passed, control.trained_total) == (0, 1)  # a random base knows no Quennport
    # A reviewer's view: the page in a real browser, screenshot and print in outputs/e2e/.
    check_report_in_chromium(index, "report_index")
    registered = read_registered(tmp_path / "run" / "registered.json")  # what notebooks 03 and 04 took their models from
    assert all(type(r.threads) is int and r.threads >= 1 for r in registered)  # --threads auto chose
    from slmops.toolkit.runtimes.foundry_session import find_model

    # The control answers with the threads its FP32 sibling was given (the same graph: the probe is read back).
    control_config = json.loads((Path(find_model("tinypipe-base").get_path()) / "genai_config.json").read_text())
    assert control_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == registered[0].threads
    assert [m.name for m in registered] == [f"tinypipe-{p}" for p in ("fp32", "int4")] and {
        m.precision for m in registered} == {"fp32", "int4"}
    assert "<h2>Registration</h2>" in page
    # The recommendation tops the page (it replaces the summary table) and agrees with test.json.
    assert page.index("<h2>Recommendation</h2>") < page.index("<h2>Notebooks</h2>") and "<h2>Summary</h2>" not in page
    decision = codec.load(Recommendation, json.loads(cli_output(["recommend", str(tmp_path / "run"), "--json"], capsys)))
    tests = read_report(tmp_path / "run" / "test.json")
    if decision.choice:  # outside the case families it fails nothing but what every build fails, FP32 included
        shared = set.intersection(*(set(tests.model(f"tinypipe-{p}").failed) for p in ("fp32", "int4")))
        own = {f for f in tests.model(f"tinypipe-{decision.choice}").failed if f.split("/")[0] not in CASE_FAMILIES}
        assert own <= shared
        # ... and no case family is worse than FP32's by the paired test, which the decision names.
        assert not [p for p in decision.paired if p.candidate == decision.choice and p.difference == "worse"]
        assert all(p.test == "McNemar's exact test" for p in decision.paired)
    for row in decision.rows:
        if row.outcome == "failed":
            assert tests.model(f"tinypipe-{row.precision}").failed
    # The run is a recipe: rerun from its own folder, it gives the same non-timing figures and verdicts.
    record = read_run_record(tmp_path / "run")
    assert record.inputs.seed == 0 and record.inputs.model.path == str(tiny_model)
    assert cli.main(["rerun", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert "differs from the recorded run" not in capsys.readouterr().err  # same inputs, nothing to say
    assert cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "again"), "--out", str(tmp_path / "cmp")]) == 0
    same = read_comparison(tmp_path / "cmp" / "compare.json")
    assert same.passed and not same.params and not same.inputs and not same.regressions
    # Every verdict is the same, but for a timing or memory check the load of the machine may leave undecided.
    assert same.verdicts and all(v.change == "same" or (v.check in ("performance", "memory")
                                                        and v.change == "inconclusive, not counted")
                                 for v in same.verdicts), same.verdicts
    assert {s.delta for s in same.sizes} == {0.0} and {q.delta for q in same.quality} == {0.0}
    # A rerun against a changed cases file says so before it starts.
    cases.write_text('{"id": "hi", "messages": [{"role": "user", "content": "Say hello."}]}\n')
    recorded_params = tmp_path / "run" / "params.json"
    changed, _machine = pipeline.rerun_differences(recorded_params, pipeline.load_params(recorded_params))
    assert len(changed) == 1 and changed[0].startswith("cases: ")


@pytest.mark.slow
def test_a_failing_notebook_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SlmopsError, match="01_convert failed"):
        pipeline.run_pipeline({"model_dir": str(tmp_path / "missing")}, tmp_path / "run", progress=False)
    page = (tmp_path / "run" / "index.html").read_text()
    assert "FAILED" in page and 'href="01_convert.html"' in page
