"""A workspace (`slmops lab`), the run file the notebooks read, the stage API and the widgets that decide."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InputError, TemplateError
from slmops.toolkit.domain.provenance import read_run_record
from slmops.toolkit.domain.templates import PromptTemplate
from slmops.toolkit.orchestration import pipeline, run_stages, runs, workspace
from slmops.widgets import ChatBox, RunPanel, RunPicker


def test_lab_makes_a_workspace_with_the_notebooks_and_the_run_file(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = tmp_path / "lab"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cases.jsonl").write_text('{"id": "hi", "messages": [{"role": "user", "content": "Hi."}]}\n')
    assert cli.main(["lab", str(folder), "--print", "--no-browser", "--set", "precisions=[int4]",
                     "--set", "cases=cases.jsonl"]) == 0
    out = capsys.readouterr().out
    # The exact command, to start JupyterLab there by hand.
    assert f"cd {folder}" in out and "-m jupyterlab" in out and f"--ServerApp.root_dir={folder}" in out
    assert "--no-browser" in out
    assert sorted(p.name for p in folder.glob("*.ipynb")) == [f"{n}.ipynb" for n in workspace.NOTEBOOKS]
    written = json.loads((folder / "params.json").read_text())
    params = pipeline.run_params.parse(written)
    # One run file, every parameter, paths absolute (the notebooks run with the workspace as their cwd).
    assert params.run_dir == str(folder) and params.precisions == ["int4"] and params.interactive is True
    assert params.cases == str(tmp_path / "cases.jsonl")
    assert set(written) == set(pipeline.run_params.DEFAULTS.as_dict())
    assert read_run_record(folder).inputs.seed == 0  # recorded as `slmops run` does
    # Opened again, the user's notebooks and parameters are kept.
    (folder / "01_convert.ipynb").write_text("{}")
    assert cli.main(["lab", str(folder), "--print"]) == 0
    assert "5 kept as they were" in capsys.readouterr().out
    assert (folder / "01_convert.ipynb").read_text() == "{}"
    assert pipeline.run_params.parse(json.loads((folder / "params.json").read_text())).precisions == ["int4"]


def test_lab_refuses_the_toolkits_own_notebooks_and_bad_parameters(tmp_path: Path, capsys) -> None:
    assert cli.main(["lab", str(pipeline.notebooks_dir()), "--print"]) == 2
    assert "toolkit's own notebooks" in capsys.readouterr().err
    assert cli.main(["lab", str(tmp_path / "w"), "--print", "--set", "repeats=0"]) == 2
    assert "repeats" in capsys.readouterr().err and not (tmp_path / "w").exists()  # nothing made
    assert cli.main(["lab", str(tmp_path / "w"), "--print", "--set", f"cases={tmp_path / 'none.jsonl'}"]) == 2
    assert "cases: nothing at" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_run_help_counts_the_notebooks_right(capsys) -> None:
    assert cli.main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "four notebooks" not in text and "01-04" in text and "05" in text


def test_notebooks_read_the_run_file_and_injected_parameters_win(tmp_path: Path, monkeypatch) -> None:
    made = workspace.create(tmp_path / "lab", {"repeats": 2, "precisions": ["fp32", "int4"]})
    monkeypatch.chdir(made.folder)  # a notebook's cwd is its folder; its run_file is relative
    run = runs.open_run("params.json", {"repeats": 5, "run_file": "params.json", "stages": object()})
    assert run.params.repeats == 5 and run.params.precisions == ["fp32", "int4"] and run.dir == made.folder
    assert pipeline.run_params.parse(json.loads((made.folder / "params.json").read_text())).repeats == 2  # not written
    # A widget's choice is recorded as `slmops run` records a run, so `rerun` repeats what was run.
    chosen = runs.record(run, precisions=["int4"])
    assert chosen.params.precisions == ["int4"]
    assert pipeline.run_params.parse(pipeline.load_params(made.folder / "params.json")).precisions == ["int4"]
    # No run file at all (a notebook opened elsewhere): the defaults, the notebook's folder, and a run file written.
    bare = tmp_path / "bare"
    bare.mkdir()
    monkeypatch.chdir(bare)
    assert runs.open_run("params.json", {}).dir == bare and (bare / "params.json").is_file()
    # Never the toolkit's own notebooks: working there would write into the checkout or the package.
    monkeypatch.chdir(pipeline.notebooks_dir())
    with pytest.raises(InputError, match="slmops lab"):
        runs.open_run("params.json", {})
    assert not (pipeline.notebooks_dir() / "params.json").exists()


def test_compare_says_what_to_pass(tmp_path: Path) -> None:
    made = workspace.create(tmp_path / "lab")
    with pytest.raises(InputError, match="set run_a to a run folder"):
        run_stages.compare("", run_file=made.run_file)
    with pytest.raises(InputError, match="no run folder"):
        run_stages.compare(str(tmp_path / "nowhere"), run_file=made.run_file)


def test_notebook_05_offers_the_runs_beside_this_one_and_waits_for_its_button_in_a_workspace(tmp_path: Path) -> None:
    lab = workspace.create(tmp_path / "lab")
    workspace.create(tmp_path / "cli", {"interactive": False})
    (tmp_path / "not-a-run").mkdir()
    picker = RunPicker("", beside=lab.run_file)
    assert picker._folder.options == (str(tmp_path / "cli"),) and picker.value.folder == ""
    picker._folder.value = str(tmp_path / "not-a-run")
    assert "no run folder" in picker.value.error and "no run folder" in picker._note.value
    picker._folder.value = str(tmp_path / "cli")
    assert picker.value.folder == str(tmp_path / "cli") and not picker.value.error
    # A workspace's notebook waits for its button; papermill's injected value wins; no run file: straight through.
    assert runs.waits_for_buttons(lab.run_file) is True
    assert runs.waits_for_buttons(lab.run_file, {"interactive": False}) is False
    assert runs.waits_for_buttons(tmp_path / "cli" / "params.json") is False
    assert runs.waits_for_buttons(tmp_path / "nowhere" / "params.json") is False
    assert not (tmp_path / "nowhere").exists()  # nothing written


def test_a_malformed_template_is_refused_in_one_line_before_anything_registers(tmp_path: Path) -> None:
    run = runs.open_run(workspace.create(tmp_path / "lab").run_file)
    broken = PromptTemplate(system="SYS\n", user="<u>{Content}</u>", assistant="{Content}", prompt="{Content}")
    with pytest.raises(TemplateError, match="exactly once"):
        run_stages.register(run, template="custom", custom=broken)
    panel = RunPanel("register", lambda: run_stages.register(run, template="custom", custom=broken))
    assert panel.run() is None and panel.value is None  # interactive: waits for the button
    panel._button.click()
    assert panel.value.ok is False and "exactly once" in panel._status.value
    assert "Traceback" not in panel._status.value and not panel._output.outputs  # one line, no traceback
    assert not (run.dir / "registered.json").exists()


def test_run_panel_waits_for_its_button_interactive_and_runs_at_once_headless() -> None:
    calls = []
    panel = RunPanel("convert", lambda: calls.append(1) or len(calls))
    assert panel.run() is None and calls == []  # Run All shows the panel; nothing starts
    assert "press" in panel._status.value
    panel._button.click()
    assert calls == [1] and panel.result == 1 and panel.value.ok
    headless = RunPanel("convert", lambda: calls.append(2) or len(calls), interactive=False)
    assert headless.run() == 2 and calls == [1, 2]


def test_the_chat_box_sends_the_whole_question_whatever_the_kernel_is_doing(monkeypatch) -> None:
    sent = []
    monkeypatch.setattr(ChatBox, "send", lambda self, message: sent.append((self.model, message)) or "")
    names = ["m-fp32", "m-int4"]
    box = ChatBox(lambda: names)
    assert box._input.continuous_update is False  # the value travels whole, on Enter or when the box is left
    # A busy kernel: the submit reaches it before the value does; the question is sent once the value lands.
    box._input._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "submit"}}}, "buffers": []})
    assert sent == []
    box._input.value = "What is the capital of Veloria?"
    assert sent == [("m-fp32", "What is the capital of Veloria?")] and box._input.value == ""
    # The Send button reads the box when it is pressed.
    box._input.value = "And of France?"
    box._send_button.click()
    assert sent[-1] == ("m-fp32", "And of France?")
    # Any registered model of the run, the base included, once registration lists it.
    names.append("m-base")
    box.refresh()
    box.model = "m-base"
    box._input.value = "Hello?"
    box._send_button.click()
    assert sent[-1] == ("m-base", "Hello?") and list(box._picker.options) == ["m-fp32", "m-int4", "m-base"]


def test_toolkit_errors_show_in_one_line_in_ipython(tmp_path: Path) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    try:
        runs.show_errors_in_one_line()
        with capture_output() as captured:
            result = shell.run_cell("from slmops.toolkit.core.errors import InputError\nraise InputError('set run_a')")
        assert not result.success  # the cell still fails (papermill records it)
        assert "InputError: set run_a" in captured.stdout + captured.stderr
        assert "Traceback" not in captured.stdout + captured.stderr
    finally:
        InteractiveShell.clear_instance()


def test_a_later_stage_takes_the_choices_an_earlier_button_recorded(tmp_path: Path) -> None:
    run = runs.open_run(workspace.create(tmp_path / "lab", {"int4_recipe": "builder-default"}).run_file)
    runs.record(run, int4_recipe="compact", precisions=["int4"])  # the convert button, as notebook 01 calls it
    later = runs.current(run)  # the recipes button of the same notebook holds the run it opened
    assert (later.params.int4_recipe, later.params.precisions) == ("compact", ["int4"])
    assert later.params.repeats == run.params.repeats
