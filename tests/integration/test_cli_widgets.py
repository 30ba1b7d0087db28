"""The CLI shell and the widgets, without a browser."""

from __future__ import annotations

import json
from pathlib import Path

from slmops.toolkit import cli


def test_cli_convert_register_ls_doctor(tiny_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "int4"
    assert cli.main(["convert", str(tiny_model), "--precision", "int4", "--out", str(out), "--block-size", "16"]) == 0
    assert "int4 model in" in capsys.readouterr().out
    assert cli.main(["register", str(out), "--name", "tiny-cli", "--template", "chatml"]) == 0
    assert cli.main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-cli:1" in listing and "int4" in listing
    assert cli.main(["doctor", str(out.parent.parent / "nope")]) == 1
    assert "FAIL  folder" in capsys.readouterr().out
    from slmops.toolkit.runtimes.foundry_session import models_root

    assert cli.main(["doctor", str(models_root() / "tiny-cli")]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_cli_register_custom_file_and_rm(tiny_int4: Path, tmp_path: Path, capsys) -> None:
    from slmops.toolkit.runtimes.foundry_session import models_root
    from slmops.toolkit.stages.register_catalog import list_models

    strings = tmp_path / "t.json"
    strings.write_text('{"system": "S:{Content}\\n", "user": "U:{Content}\\n", "assistant": "A:{Content}\\n", '
                       '"prompt": "U:{Content}\\nA:"}')
    assert cli.main(["register", str(tiny_int4), "--name", "tiny-file", "--template-file", str(strings),
                     "--temperature", "0.3"]) == 0
    info = json.loads((models_root() / "tiny-file" / "inference_model.json").read_text())
    assert info["PromptTemplate"]["prompt"] == "U:{Content}\nA:" and info["ModelConfig"]["temperature"] == 0.3
    assert cli.main(["rm", "tiny-file"]) == 0
    assert "tiny-file" not in {row.name for row in list_models()}
    assert cli.main(["register", str(tiny_int4), "--name", "tiny-x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err
