"""What Foundry Local's cache holds, as ``slmops ls`` lists it: one typed row per model, one codec for its JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import codec
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages.register_catalog import CatalogEntry, list_models


def test_a_cache_folder_is_listed_as_a_typed_row_and_ls_json_writes_it_with_the_codec(
        cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = models_root() / "typed-row"
    folder.mkdir(parents=True)
    try:
        (folder / "inference_model.json").write_text(json.dumps({"Name": "typed-row", "Version": 3}))
        (folder / "model.onnx").write_bytes(b"x" * 250_000)
        (row,) = [r for r in list_models() if r.name == "typed-row"]
        assert row == CatalogEntry("typed-row", "typed-row:3", False, True, "?", "?", 0.3, str(folder))
        assert cli.main(["ls", "--json"]) == 0
        listed = codec.load(list[CatalogEntry], json.loads(capsys.readouterr().out))
        assert row in listed
        assert cli.main(["ls"]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("typed-row "))
        assert line.split() == ["typed-row", "typed-row:3", "?", "0.3", "no", "yes"]
    finally:
        shutil.rmtree(folder)
