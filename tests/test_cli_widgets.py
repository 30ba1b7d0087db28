"""The CLI shell and the widgets, without a browser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import cli
from toolkit.convert import Int4Options, Precision
from toolkit.templates import Template
from widgets import PrecisionPicker, TemplatePicker

COMMANDS = ["demo", "run", "convert", "register", "ls", "chat", "test", "bench", "doctor", "bundled"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: slmops " + command in capsys.readouterr().out


def test_errors_exit_2_with_the_fix(tmp_path: Path, capsys) -> None:
    assert cli.main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["register", str(tmp_path), "--name", "../x"]) == 2
    assert "not safe" in capsys.readouterr().err


def test_console_script_runs() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "slmops"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "convert" in done.stdout


def test_cli_convert_register_ls_doctor(tiny_model: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "int4"
    assert cli.main(["convert", str(tiny_model), "--precision", "int4", "--out", str(out), "--block-size", "16"]) == 0
    assert "int4 model in" in capsys.readouterr().out
    assert cli.main(["register", str(out), "--name", "tiny-cli", "--template", "chatml"]) == 0
    assert cli.main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-cli:1" in listing and "int4" in listing
    assert cli.main(["doctor", str(out.parent.parent / "nope")]) == 1
    assert "FAIL  genai_config.json" in capsys.readouterr().out
    from toolkit.register import models_root

    assert cli.main(["doctor", str(models_root() / "tiny-cli")]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_precision_picker_value_follows_children() -> None:
    picker = PrecisionPicker(["fp32", "int4"], block_size=64)
    assert picker.value.precisions == (Precision.FP32, Precision.INT4)
    assert picker.value.int4 == Int4Options(block_size=64)
    picker._precisions.value = (Precision.INT8,)
    picker._block_size.value = 128
    assert picker.value.precisions == (Precision.INT8,) and picker.value.int4.block_size == 128


def test_template_picker_previews_the_prompt() -> None:
    picker = TemplatePicker("auto")
    assert "derived" in picker._preview.value
    picker._preset.value = "phi3"
    assert picker.value.template is Template.PHI3
    assert "&lt;|user|&gt;" in picker._preview.value
