"""Checkpoint forms (issue 23, item 3): .bin models read weights-only, quantized checkpoints and configs that
contradict their weights refused in one line from the headers, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.domain import sources
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.weights import checkpoints
from tests.unit.test_checkpoints import as_bin


def test_a_bin_model_is_read_weights_only_and_converts_without_a_crash(tiny_model: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    folder = as_bin(tiny_model, tmp_path / "bin")
    (folder / "training_args.bin").write_bytes(b"not weights: a trainer's pickled arguments")  # never taken as weights
    reference = checkpoints.inspect_source(tiny_model)
    out = tmp_path / "int8"
    assert cli.main(["convert", str(folder), "--precision", "int8", "--out", str(out)]) == 0  # was: NoneType.__format__
    manifest = read_manifest(out)
    assert manifest.parameters == reference.parameters and 0 < manifest.size_ratio_vs_fp32 < 1
    assert "x FP32" in capsys.readouterr().out
    source = checkpoints.inspect_source(folder)
    assert (source.parameters, source.largest_tensor) == (reference.parameters, reference.largest_tensor) > (0, 0)
    assert sources.weight_files(folder) == [folder / "pytorch_model.bin"]
    sharded = checkpoints.inspect_source(as_bin(tiny_model, tmp_path / "bin-sharded", shards=2))
    assert sharded.parameters == reference.parameters
