"""The notebooks as committed (thin, cleared, made from their sources), params files and sweeps."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.domain.run_params import CompareParams, parameters_cell, parse
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.presentation import report

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


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
