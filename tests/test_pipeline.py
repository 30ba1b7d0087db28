"""The four notebooks through papermill in a real kernel, and the run's index page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from toolkit import pipeline, report
from toolkit.errors import SlmopsError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_notebooks_are_thin_and_clean(name: str) -> None:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in book.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None  # committed with outputs cleared
            assert not re.search(r"^\s*(def|class) ", cell.source, re.M)  # no logic in notebooks
    params = set(re.findall(r"^(\w+):", tagged[0].source, re.M))
    assert params == set(pipeline.DEMO_PARAMS) | {"run_dir", "interactive"}


def test_load_params_rejects_unknown_names(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_text("precisions: [int4]\ntypo_param: 1\n")
    with pytest.raises(SlmopsError, match="typo_param"):
        pipeline.load_params(file)
    file.write_text("precisions: [int4]\ngen_tokens: 4\n")
    assert pipeline.load_params(file) == {"precisions": ["int4"], "gen_tokens": 4}


@pytest.mark.slow
def test_pipeline_on_a_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    params = {"model_dir": str(tiny_model), "name_prefix": "tinypipe", "precisions": ["fp32", "int4"],
              "prompt_lengths": [16], "gen_tokens": 4, "repeats": 1, "warmup": 0}
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
    assert len(bench["engine_ratios"]) == 2 and bench["metadata"]["memory_bandwidth_gbs"] > 0
    assert "int4: " in html["04_benchmark"] and "x fp32 decode speed" in html["04_benchmark"]  # generated summary
    for png in ("sizes.png", "recipes.png", "decode_tps.png", "ttft_ms.png", "e2e_ms.png", "peak_rss_mb.png",
                "tradeoff.png", "rss_over_requests.png", "ms_per_token.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000 and f'src="{png}"' in page


@pytest.mark.slow
def test_a_failing_notebook_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SlmopsError, match="01_convert failed"):
        pipeline.run_pipeline({"model_dir": str(tmp_path / "missing")}, tmp_path / "run", progress=False)
    page = (tmp_path / "run" / "index.html").read_text()
    assert "FAILED" in page and 'href="01_convert.html"' in page
