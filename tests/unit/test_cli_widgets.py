"""The CLI shell and the widgets, without a browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.cli.pipeline import int4_options
from slmops.toolkit.domain.options import INT4_RECIPES, Int4Algorithm, Int4Options, Precision, TablePrecision
from slmops.toolkit.domain.results.deployment import PrecisionFigures
from slmops.toolkit.domain.templates import Template
from slmops.widgets import ModelChoice, ModelPicker, PrecisionPicker, RunPanel, TemplatePicker

COMMANDS = ["demo", "run", "report", "convert", "recipes", "register", "rm", "ls", "chat", "test", "bench", "doctor",
            "bundled"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys) -> None:
    assert cli.main([command, "--help"]) == 0
    assert "usage: slmops " + command in capsys.readouterr().out


def test_errors_exit_2_with_the_fix(tmp_path: Path, capsys) -> None:
    assert cli.main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["register", str(tmp_path), "--name", "../x"]) == 2
    assert "not safe" in capsys.readouterr().err


def test_console_script_runs() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "slmops"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "convert" in done.stdout


def test_precision_picker_value_follows_children() -> None:
    picker = PrecisionPicker(["fp32", "int4"], int4=Int4Options(block_size=64))
    assert picker.value.precisions == (Precision.FP32, Precision.INT4)
    assert picker.value.int4 == Int4Options(block_size=64)
    picker._precisions.value = (Precision.INT8,)
    picker._block_size.value = 128
    assert picker.value.precisions == (Precision.INT8,) and picker.value.int4.block_size == 128
    picker._recipe.value = "hqq"
    assert picker.value.int4 == INT4_RECIPES["hqq"]
    picker._lm_head.value = "fp32"  # an edit after the recipe stays
    assert picker.value.int4.lm_head is TablePrecision.FP32 and picker.value.int4.algorithm is Int4Algorithm.HQQ


def test_convert_flags_override_the_recipe() -> None:
    args = cli.build_parser().parse_args(["convert", "m", "--out", "o", "--recipe", "compact", "--block-size", "64"])
    assert int4_options(args) == Int4Options(block_size=64, algorithm="rtn", embeddings="int4")
    args = cli.build_parser().parse_args(["convert", "m", "--out", "o", "--asymmetric", "--lm-head", "int8"])
    assert int4_options(args) == Int4Options(symmetric=False, lm_head="int8")


def test_the_closest_int4_is_reachable_from_the_command_line(tmp_path: Path) -> None:
    """The rotated, GPTQ-calibrated v-down-all plan (docs/benchmarks.md, "Rotation and GPTQ"): from the mixed recipe, which is
    asymmetric, --algorithm gptq makes it symmetric; a calibration file is checked before anything runs."""
    from slmops.toolkit.core.errors import InvalidOptionError

    text = tmp_path / "prose.txt"
    text.write_text("Generic prose. " * 50)
    args = cli.build_parser().parse_args(["convert", "m", "--out", "o", "--recipe", "mixed", "--algorithm", "gptq",
                                          "--mix", "v-down-all", "--block-size", "64", "--rotate",
                                          "--calibration", str(text)])
    options = int4_options(args)
    options.validate()
    assert options == Int4Options(block_size=64, algorithm="gptq", lm_head="int8", embeddings="int8",
                                  mix="v-down-all", rotate=True, calibration=str(text))
    assert not options.builder_native
    for flags, problem in ((["--calibration", str(text)], "only with the gptq"),
                           (["--algorithm", "gptq", "--calibration", str(tmp_path / "none.txt")], "existing")):
        args = cli.build_parser().parse_args(["convert", "m", "--out", "o", *flags])
        with pytest.raises(InvalidOptionError, match=problem):
            int4_options(args).validate()


def test_template_picker_previews_the_prompt() -> None:
    picker = TemplatePicker("auto")
    assert "derived" in picker._preview.value
    picker._preset.value = "phi3"
    assert picker.value.template is Template.PHI3
    assert "&lt;|user|&gt;" in picker._preview.value


def test_template_picker_edits_become_a_custom_template(tiny_model: Path) -> None:
    from slmops.toolkit.domain.templates import PRESETS, PromptTemplate

    picker = TemplatePicker("auto", model_dir=tiny_model)
    assert picker._fields["user"].value == PRESETS[Template.CHATML].user  # derived from the model
    picker._fields["system"].value = "SYSTEM: {Content}\n"
    assert picker.value.template is Template.CUSTOM and picker._preset.value == "custom"
    assert picker.value.custom == PromptTemplate("SYSTEM: {Content}\n", *(PRESETS[Template.CHATML].as_json()[k]
                                                                        for k in ("user", "assistant", "prompt")))
    assert "SYSTEM: You are a helpful assistant." in picker._preview.value
    picker._fields["user"].value = "no placeholder"
    assert "exactly once" in picker._preview.value
    picker._preset.value = "mistral"
    assert picker.value.template is Template.MISTRAL and picker.value.custom is None
    assert "[INST]And of Italy?[/INST]" in picker._preview.value
    picker._preset.value = "llama3"  # editing a preset keeps the BOS its family writes
    picker._fields["system"].value = picker._fields["system"].value + " "
    assert picker.value.custom.bos == PRESETS[Template.LLAMA3].bos == "<|begin_of_text|>"


def test_precision_picker_shows_the_trade_off_then_measured_figures() -> None:
    picker = PrecisionPicker(["int4"])
    assert "×0.125" in picker._tradeoff.value and "int8" not in picker._tradeoff.value
    picker._precisions.value = (Precision.INT8, Precision.INT4)
    assert '"text">int8</td>' in picker._tradeoff.value and "×0.25" in picker._tradeoff.value
    picker.measured = {"int4": PrecisionFigures("", "int4", size_mb=203.3, x_fp32=0.374, top1_agreement=0.666,
                                                decode_tps=93.75)}
    shown = picker._tradeoff.value  # the report's renderer: figures rounded for reading
    assert '"num">203</td>' in shown and "top-1 agreement 0.666" in shown and '"num">93.8</td>' in shown


def test_model_picker_checks_the_folder_as_it_is_typed(tiny_model: Path, tmp_path: Path) -> None:
    picker = ModelPicker()
    assert picker.value == ModelChoice() and "bundled" in picker._status.value and picker._folder.disabled
    picker._source.value = "folder"
    assert picker.value.error and not picker._folder.disabled
    picker._folder.value = str(tmp_path / "nope")
    assert "no such folder" in picker.value.error and "✗" in picker._status.value
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"architectures": ["WeirdForCausalLM"]}')
    (tmp_path / "odd" / "model.safetensors").write_bytes(b"")
    (tmp_path / "odd" / "tokenizer.json").write_text("{}")
    picker._folder.value = str(tmp_path / "odd")
    assert "not a readable safetensors file" in picker.value.error  # a damaged file is named, not a crash
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "odd" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    picker._folder.value = str(tmp_path / "odd") + "/"
    assert "WeirdForCausalLM" in picker.value.error  # unsupported architecture, named
    picker._folder.value = str(tiny_model)
    assert picker.value == ModelChoice(str(tiny_model)) and "Qwen2ForCausalLM" in picker._status.value
    assert os.fspath(picker.value) == str(tiny_model)  # the toolkit takes the choice as a path


def test_run_panel_runs_shows_and_reports_errors(capsys) -> None:
    from slmops.toolkit.core.errors import InvalidOptionError

    shown = []
    panel = RunPanel("stage", lambda: 41 + 1, show=shown.append, interactive=False)
    assert panel.run() == 42 and shown == [42] and panel.value.ok and "done" in panel._status.value

    def fail() -> None:
        raise InvalidOptionError("x", 1, "2")

    headless = RunPanel("bad", fail, interactive=False)
    with pytest.raises(InvalidOptionError):
        headless.run()
    assert headless.value.ok is False and "x" in headless.value.message
    interactive = RunPanel("bad", fail)
    interactive._button.click()  # the button runs it again; the error is shown in the panel, not raised
    assert interactive.value.ok is False and "✗" in interactive._status.value
    assert not interactive._button.disabled
