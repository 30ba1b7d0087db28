"""The notebooks through papermill in a real kernel (01-04 as `slmops run`, 05 alone), and the run's index page."""

from __future__ import annotations

import html as html_module
import importlib.util
import json
import re
import zipfile
from pathlib import Path

import nbformat
import papermill
import pytest
from test_browser import check_report_in_chromium

from slmops.toolkit import cli
from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.domain.params import CompareParams, parameters_cell, parse
from slmops.toolkit.domain.results.registration import read_registered
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.presentation import report
from slmops.toolkit.stages import finetune

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def cli_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``slmops ARGV`` prints (run in this process; it must succeed, or find nothing to deploy)."""
    capsys.readouterr()
    assert cli.main(argv) in (0, 1)
    return capsys.readouterr().out


def _made_from_source(source: Path) -> nbformat.NotebookNode:
    """What scripts/make_notebooks.py makes of a notebook's percent-format source."""
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "scripts" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.notebook(source)


@pytest.mark.parametrize("name", [*report.NOTEBOOKS, "05_compare"])
def test_notebooks_are_thin_clean_and_made_from_their_source(name: str) -> None:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None  # committed with outputs cleared
            assert not re.search(r"^\s*(def|class) ", cell.source, re.MULTILINE)  # no logic in notebooks
    assert book.cells[0].cell_type == "markdown" and len(book.cells[0].source) > 200  # opens with its stage
    # The parameters are the run file's (one for the five notebooks); papermill's injected ones override them.
    assert tagged[0].source.startswith('run_file = "params.json"')
    if name == "05_compare":  # its own parameters: as the parameter model declares them
        assert tagged[0].source.splitlines()[1:] == parameters_cell(CompareParams).splitlines()
    # The .ipynb is what its readable source makes (edit notebooks/NAME.py, run scripts/make_notebooks.py).
    made = _made_from_source(NOTEBOOKS / f"{name}.py")
    assert [(c.cell_type, c.source, c.metadata) for c in book.cells] == [
        (c.cell_type, c.source, c.metadata) for c in made.cells]


def test_load_params_rejects_unknown_names_and_takes_a_runs_own_params(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("precisions: [int4]\ntypo_param: 1\n")
    with pytest.raises(SlmopsError, match="typo_param"):
        pipeline.load_params(file)
    file.write_text("precisions: [int4]\ngen_lengths: [4]\n")
    assert pipeline.load_params(file) == {"precisions": ["int4"], "gen_lengths": [4]}
    # A run's params.json (every parameter, run_dir and interactive included) is a valid params file.
    written = tmp_path / "params.json"
    written.write_text(json.dumps(parse({"precisions": ["int4"], "run_dir": "/x", "interactive": False}).as_dict()))
    assert pipeline.load_params(written)["precisions"] == ["int4"]


def test_sweep_runs_are_every_combination_with_their_own_names() -> None:
    runs = pipeline.sweep_runs({"name_prefix": "m", "repeats": 1,
                                "sweep": {"precisions": [["fp32", "int4"], ["int8"]], "int4_block_size": [32, 128]}})
    assert [label for label, _ in runs] == ["1-precisions=fp32+int4_int4_block_size=32",
                                            "2-precisions=fp32+int4_int4_block_size=128",
                                            "3-precisions=int8_int4_block_size=32",
                                            "4-precisions=int8_int4_block_size=128"]
    assert [p["name_prefix"] for _, p in runs] == ["m-s1", "m-s2", "m-s3", "m-s4"]
    assert runs[1][1] == {"name_prefix": "m-s2", "repeats": 1, "precisions": ["fp32", "int4"], "int4_block_size": 128}


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
    bench = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert {r["precision"] for r in bench["rows"]} == {"fp32", "int4"}
    assert {r["engine"] for r in bench["rows"]} == {"foundry-local", "ort-genai"}
    assert len(bench["engine_ratios"]) == 4 and bench["metadata"]["memory_bandwidth_gbs"] > 0
    assert "int4: " in html["04_benchmark"] and "x fp32 decode speed" in html["04_benchmark"]  # generated summary
    for png in ("sizes.png", "recipes.png", "decode_tps.png", "ttft_ms.png", "latency_vs_prompt.png", "peak_rss_mib.png",
                "tradeoff.png", "rss_over_requests.png", "ms_per_token.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000 and f'src="{png}"' in page
    for text in html.values():  # readable offline: no widget views, nothing fetched from a CDN
        assert "widget-view+json" not in text and "cdnjs" not in text and "unpkg" not in text
    assert "<h2>Recommendation</h2>" in page and "<td>int4</td>" in page and "<h2>Versions</h2>" in page
    assert "<td>foundry-local-sdk</td><td>2.2.1</td>" in page
    assert '"name_prefix": "tinypipe"' in html_module.unescape(page)  # the exact parameters
    # The report is self-contained: every link resolves inside the archive, weights left out.
    assert cli.main(["report", str(tmp_path / "run"), "--zip"]) == 0
    with zipfile.ZipFile(tmp_path / "run.zip") as archive:
        names = set(archive.namelist())
    links = set(re.findall(r'(?:href|src)="([^"]+)"', page))
    assert links and {f"run/{link}" for link in links} <= names
    assert not any(n.endswith((".onnx", ".data")) for n in names) and "run/models/int4/manifest.json" in names
    converted = json.loads((tmp_path / "run" / "models" / "convert.json").read_text())
    assert all(m["adapter"]["path"] == str(adapter.resolve()) for m in converted)
    assert [m["parity"]["checks"][0]["top1_agreement"] for m in converted if m["precision"] == "fp32"] == [1.0]
    control = json.loads((tmp_path / "run" / "test.json").read_text())["control"]
    assert control["model"] == "tinypipe-base" and (control["trained_passed"], control["trained_total"]) == (0, 1)  # a random base knows no Quennport
    # A reviewer's view: the page in a real browser, screenshot and print in outputs/e2e/.
    check_report_in_chromium(index, "report_index")
    registered = read_registered(tmp_path / "run" / "registered.json")  # what notebooks 03 and 04 took their models from
    assert all(type(r.threads) is int and r.threads >= 1 for r in registered)  # --threads auto chose
    from slmops.toolkit.runtimes.foundry import find_model

    # The control answers with the threads its FP32 sibling was given (the same graph: the probe is read back).
    control_config = json.loads((Path(find_model("tinypipe-base").get_path()) / "genai_config.json").read_text())
    assert control_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == registered[0].threads
    assert [m.name for m in registered] == [f"tinypipe-{p}" for p in ("fp32", "int4")] and {
        m.precision for m in registered} == {"fp32", "int4"}
    assert "<h2>Registration</h2>" in page
    # The recommendation tops the page (it replaces the summary table) and agrees with test.json.
    assert page.index("<h2>Recommendation</h2>") < page.index("<h2>Notebooks</h2>") and "<h2>Summary</h2>" not in page
    decision = json.loads(cli_output(["recommend", str(tmp_path / "run"), "--json"], capsys))
    tests = json.loads((tmp_path / "run" / "test.json").read_text())
    if decision["choice"]:  # it fails nothing but what every build fails, FP32 included
        shared = set.intersection(*(set(tests["summary"][f"tinypipe-{p}"]["failed"]) for p in ("fp32", "int4")))
        assert set(tests["summary"][f"tinypipe-{decision['choice']}"]["failed"]) <= shared
    for row in decision["rows"]:
        if row["outcome"] == "failed":
            assert tests["summary"][f"tinypipe-{row['precision']}"]["failed"]
    # The run is a recipe: rerun from its own folder, it gives the same non-timing figures and verdicts.
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["inputs"]["seed"] == 0 and record["inputs"]["model"]["path"] == str(tiny_model)
    assert cli.main(["rerun", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert "differs from the recorded run" not in capsys.readouterr().err  # same inputs, nothing to say
    assert cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "again"), "--out", str(tmp_path / "cmp")]) == 0
    same = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert same["passed"] and not same["params"] and not same["inputs"] and not same["regressions"]
    assert same["verdicts"] and {v["change"] for v in same["verdicts"]} == {"same"}
    assert {s["delta"] for s in same["sizes"]} == {0.0} and {q["delta"] for q in same["quality"]} == {0.0}
    # A rerun against a changed cases file says so before it starts.
    cases.write_text('{"id": "hi", "messages": [{"role": "user", "content": "Say hello."}]}\n')
    recorded_params = tmp_path / "run" / "params.json"
    changed, _machine = pipeline.rerun_differences(recorded_params, pipeline.load_params(recorded_params))
    assert len(changed) == 1 and changed[0].startswith("cases: ")


@pytest.mark.slow
def test_a_sweep_runs_each_set_and_compares_them(tiny_sweep: tuple[Path, Path, str, str], tmp_path: Path) -> None:
    _params, sweep, printed, errors = tiny_sweep
    lines = printed.splitlines()  # one line as each stage starts and one as it ends
    assert lines[:2] == ["[1/4] convert and quantize: int4 ...", lines[1]] and lines[1].startswith(
        "[1/4] convert and quantize: ok in ")
    assert sum(line.startswith("[4/4] benchmark: ok in ") for line in lines) == 2
    assert "Executing" not in errors  # papermill's cell counter is off
    page = (sweep / "index.html").read_text()
    for number, block in ((1, 32), (2, 64)):
        label = f"{number}-int4_block_size={block}"
        assert f'href="{label}/index.html"' in page
        manifest = json.loads((sweep / label / "models" / "int4" / "manifest.json").read_text())
        assert manifest["options"]["block_size"] == block  # each run really built its own block size
        assert (sweep / label / "index.html").is_file()
    assert page.count("<td>int4</td>") == 2
    # The two runs differ in one INT4 option (and, by design, their registered names): exactly that shows.
    runs = [sweep / "1-int4_block_size=32", sweep / "2-int4_block_size=64"]
    assert cli.main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) in (0, 1)
    found = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [p["parameter"] for p in found["params"]] == ["int4_block_size", "name_prefix"]
    assert not found["inputs"] and [s["precision"] for s in found["sizes"]] == ["int4"]
    assert found["sizes"][0]["delta"] != 0  # block 64 has fewer scales than block 32
    # Notebook 05 does the same in a real kernel.
    notebook = tmp_path / "05_compare.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "05_compare.ipynb"), str(notebook), kernel_name="python3",
                               parameters={"run_a": str(runs[0]), "run_b": str(runs[1]),
                                           "out_dir": str(tmp_path / "cmp-nb")}, progress_bar=False)
    executed = nbformat.read(notebook, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert json.loads((tmp_path / "cmp-nb" / "compare.json").read_text())["params"] == found["params"]


@pytest.mark.slow
def test_a_failing_notebook_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SlmopsError, match="01_convert failed"):
        pipeline.run_pipeline({"model_dir": str(tmp_path / "missing")}, tmp_path / "run", progress=False)
    page = (tmp_path / "run" / "index.html").read_text()
    assert "FAILED" in page and 'href="01_convert.html"' in page
