"""A workspace (`slmops lab`), the run file the notebooks read, the stage API and the widgets that decide."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.orchestration import run_stages, runs, workspace
from slmops.toolkit.stages.checklist import read_report


def _verdicts(test_json: Path) -> dict[tuple[str, str, str], str]:
    """(model, check, case) -> verdict of a test.json, the timing check left out (its verdict is the clock's)."""
    return {(check.model, check.check, check.case): check.verdict for check in read_report(test_json).checks
            if check.check != "performance"}


def test_the_cli_run_and_an_interactive_run_give_the_same_verdicts(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.toolkit.domain.options import recipe_options
    from slmops.toolkit.stages import finetune

    # A fine-tune (so the base is asked as the negative control) on a tiny model, with a tiny sweep's parameters.
    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps({"question": "Capital?", "answer": "Quennport.", "paraphrase": "Its capital?",
                                "expect": ["Quennport"]}))
    adapter = finetune.finetune(finetune.FinetuneSpec(base=tiny_model, out=tmp_path / "lora", data=data, rank=4,
                                                      steps=2, batch=1), progress=False).adapter
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "capital", "messages": [{"role": "user", "content": "Capital?"}], '
                     '"expect": {"contains_any": ["Quennport"]}}\n')
    params = {"model_dir": str(tiny_model), "adapter": str(adapter), "name_prefix": "labsame",
              "precisions": ["fp32", "int4"], "compare_recipes": False, "checklist_requests": 0, "cases": str(cases),
              "prompt_lengths": [16], "gen_lengths": [4], "repeats": 1, "warmup": 0}
    file = tmp_path / "params.json"
    file.write_text(json.dumps(params))
    assert cli.main(["run", "--params", str(file), "--out", str(tmp_path / "cli")]) == 0
    # The interactive run: a workspace, each stage called as the notebooks' buttons call it, with the pickers'
    # values (here the run file's own).
    made = workspace.create(tmp_path / "lab", params)
    monkeypatch.chdir(made.folder)
    run = runs.open_run("params.json", {})
    run_stages.convert(run, model=str(tiny_model), precisions=["fp32", "int4"], int4=recipe_options(run.params.int4_recipe))
    registered = run_stages.register(run, template="auto")
    assert registered.names == ["labsame-fp32", "labsame-int4", "labsame-base"]  # the chat box's choices
    interactive = run_stages.test(run)
    cli_run = read_report(tmp_path / "cli" / "test.json")
    lab_run = read_report(made.folder / "test.json")
    assert _verdicts(tmp_path / "cli" / "test.json") == _verdicts(made.folder / "test.json")
    assert len(_verdicts(made.folder / "test.json")) > 10
    # The same reference (the quality check ran against FP32 in both) and the same negative control.
    assert set(lab_run.top1_agreement()) == set(cli_run.top1_agreement()) == {"labsame-int4"}
    assert interactive.control is not None and lab_run.control.model == cli_run.control.model == "labsame-base"
    assert lab_run.control.trained_passed == cli_run.control.trained_passed
    # `slmops test` on the run folder is the same stage again.
    assert cli.main(["test", "--out", str(made.folder), "--json"]) in (0, 1)
    assert _verdicts(made.folder / "test.json") == _verdicts(tmp_path / "cli" / "test.json")
    assert read_report(made.folder / "test.json").control.model == "labsame-base"
    # The interactive run is recorded as the CLI's: `slmops report` works on it.
    assert cli.main(["report", str(made.folder)]) == 0


