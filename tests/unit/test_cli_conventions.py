"""The CLI's conventions: --version, global flags anywhere, -o/--out, --json everywhere (errors too), --set,
grouped help, help text and defaults on every option, logging levels."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.cli import common, models, pipeline, runs
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import ParamsError
from slmops.toolkit.domain import run_params
from slmops.toolkit.domain.deployment_choice import Recommendation
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import ChecklistReport
from slmops.toolkit.stages import bench, checklist

SLMOPS = str(Path(sys.executable).parent / "slmops")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_from_the_console_script() -> None:
    done = subprocess.run([SLMOPS, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"slmops {cli.version()}"
    assert cli.version()[0].isdigit()


def test_help_groups_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    starts = [out.index(common.GROUP_TITLES[g]) for g in common.Group]
    assert starts == sorted(starts)
    pipeline_part = out[starts[0]:starts[1]]
    assert "  convert " in pipeline_part and "  ls " not in pipeline_part
    assert "  ls " in out[starts[1]:starts[2]] and "  compare " in out[starts[2]:]
    listed = {c.name for m in (pipeline, models, runs) for c in m.COMMANDS}
    assert listed == set(subcommands())  # every command listed once, in its group


def test_test_help_documents_reference_none_and_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["test", "--help"], capsys)
    out = " ".join(out.split())
    assert code == 0 and out.startswith("usage: slmops test ") and "none: skip the quality check" in out
    assert "default 120" in out  # --requests, from RunParams
    assert "Foundry Local's cache" in out  # test has --cache-dir


def test_every_option_has_help_and_states_its_default() -> None:
    for name, parser in subcommands().items():
        formatter = common.Formatter(prog=name)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"slmops {name} {action.option_strings or action.dest} has no help"
            shown = formatter._get_help_string(action)
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, "", []):
                assert "default" in shown, f"slmops {name} {action.option_strings} hides its default"


def test_the_cache_epilog_only_where_the_option_is() -> None:
    for name, parser in subcommands().items():
        has_option = any("--cache-dir" in a.option_strings for a in parser._actions)
        assert has_option == ("Foundry Local's cache" in parser.format_help()), name


def test_global_flags_work_after_the_subcommand(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: object) -> int:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(models, "cmd_ls", broken)
    code, _, err = run_cli(["ls"], capsys)
    assert code == 1 and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["ls", "--debug"])
    args = cli.build_parser().parse_args(["-v", "ls", "-q", "--json"])
    assert args.verbose == 1 and args.quiet == 1 and args.json


def test_quiet_and_verbose_set_what_the_library_logs(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def chatty(_args: object) -> int:
        log = logging.getLogger("slmops.toolkit.orchestration.pipeline")
        log.debug("a debug line")
        log.info("[1/4] convert and quantize: ok in 1 s")
        log.warning("a warning")
        return 0

    monkeypatch.setattr(models, "cmd_ls", chatty)
    _, out, err = run_cli(["ls"], capsys)
    assert out == "[1/4] convert and quantize: ok in 1 s\n" and err == "warning: a warning\n"
    _, out, err = run_cli(["ls", "-q"], capsys)
    assert out == "" and err == "warning: a warning\n"
    _, out, _ = run_cli(["ls", "-v"], capsys)
    assert "a debug line" in out
    _, out, err = run_cli(["ls", "--json"], capsys)
    assert out == "" and "[1/4]" in err  # progress never mixes with JSON on stdout


def test_ls_json_debug(capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run([SLMOPS, "ls", "--json", "--debug"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)


def test_errors_are_json_under_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["recommend", str(tmp_path / "nope"), "--json"], capsys)
    assert code == 2 and json.loads(out) == {"error": json.loads(out)["error"], "kind": "InputError", "exit_code": 2}
    assert "no test.json" in json.loads(out)["error"] and err == ""
    code, out, _ = run_cli(["bench", "--engines", "nope", "--json"], capsys)  # a usage error
    assert code == 2 and json.loads(out)["kind"] == "usage"
    code, out, _ = run_cli(["bench", "-o", str(tmp_path), "--json"], capsys)  # no names, and no registered.json there
    assert code == 2 and json.loads(out)["kind"] == "InputError" and "registered.json" in json.loads(out)["error"]
    code, out, err = run_cli(["recommend", str(tmp_path / "nope")], capsys)
    assert code == 2 and out == "" and err.startswith("slmops: error: No checklist results")


def test_json_of_the_commands_that_read_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.unit.test_compare import write_run

    a = write_run(tmp_path / "a", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    b = write_run(tmp_path / "b", block=64, int4_mb=30.0, top1=0.7, domain_ok=True, decode=121.0, ttft=90.0)
    code, out, _ = run_cli(["recommend", str(a), "--json"], capsys)
    assert code == 0 and codec.load(Recommendation, json.loads(out)).choice
    code, out, _ = run_cli(["compare", str(a), str(b), "-o", str(tmp_path / "cmp"), "--json"], capsys)
    assert Path(json.loads(out)["report"]).is_file() and json.loads(out)["passed"] == (code == 0)
    (a / "index.html").write_text("<html></html>")  # the page itself is the report module's (its own tests)
    monkeypatch.setattr(runs.report, "write_index", lambda run: Path(run) / "index.html")
    code, out, _ = run_cli(["report", str(a), "--zip", "-o", str(tmp_path / "send"), "--json"], capsys)
    written = json.loads(out)
    assert code == 0 and written["archive"] == str(tmp_path / "send" / "a.zip") and Path(written["archive"]).is_file()
    code, out, _ = run_cli(["doctor", str(tmp_path), "--no-load", "--json"], capsys)
    assert code == 1 and json.loads(out)["ok"] is False and json.loads(out)["checks"][0]["detail"]
    code, out, _ = run_cli(["rm", "no-such-model", "--json"], capsys)
    assert code == 2 and "No model named" in json.loads(out)["error"]


class _Result(types.SimpleNamespace):
    pass


@dataclass(frozen=True)
class _Registration:
    model_id: str
    notes: tuple = ()
    threads: None = None
    tool_calling: None = None


@pytest.mark.parametrize("argv", [
    ["demo"], ["run", "--set", "repeats=1", "-o", "{tmp}/r"], ["rerun", "{run}", "-o", "{tmp}/again"],
    ["convert", "m", "-o", "{tmp}/m"], ["finetune", "d.jsonl", "--base", "b", "-o", "{tmp}/a"],
    ["recipes", "m", "--reference", "r", "-o", "{tmp}/rec"], ["register", "x", "--name", "n"],
    ["test", "n", "--reference", "none", "-o", "{tmp}/t"], ["bench", "n", "-o", "{tmp}/b"], ["bundled"],
])
def test_every_result_command_prints_parseable_json(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The stages are replaced by canned results: this checks the CLI's own JSON, not the stages."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text("{}")
    index = tmp_path / "r" / "index.html"
    seen = {}
    monkeypatch.setattr(pipeline.pipeline, "demo", lambda out, model: index)

    def run_pipeline(params: dict, out: object) -> Path:
        seen["params"] = params
        return index

    monkeypatch.setattr(pipeline.pipeline, "run_pipeline", run_pipeline)
    monkeypatch.setattr(pipeline.pipeline, "load_params", lambda path, **_: {})
    monkeypatch.setattr(pipeline.pipeline, "rerun_differences", lambda *_: ([], []))
    monkeypatch.setattr(pipeline.convert, "convert", lambda spec, **_: _Result(output_dir=spec.output_dir, manifest={"a": 1}))
    monkeypatch.setattr(pipeline.finetune, "finetune", lambda spec: {"adapter": spec.out, "losses": [1.0, 0.1]})
    monkeypatch.setattr(pipeline.recipes, "compare_int4_recipes", lambda *a, **k: [_Result(recipe="x", top1_agreement=0.9)])
    monkeypatch.setattr(pipeline.recipe_choice, "recommend_recipe", lambda results: ("x", "use x"))
    monkeypatch.setattr(pipeline.register, "register", lambda *a, **k: _Registration("n:1"))
    monkeypatch.setattr(checklist, "load_cases", lambda path: [])
    monkeypatch.setattr(checklist, "run_checklists",
                        lambda names, reference, **_: seen.setdefault("reference", reference) or [])
    monkeypatch.setattr(checklist, "write_report", lambda reports, path, limits, **_: ChecklistReport([]))
    monkeypatch.setattr(bench, "bench", lambda names, **_: [])
    monkeypatch.setattr(bench, "write_results", lambda rows, out: BenchFile())
    monkeypatch.setattr(pipeline.plots, "bench_figures", lambda results, quality: {})
    monkeypatch.setattr(models, "bundled_model", lambda rebuild: Path("/somewhere/SmolLM2"))
    argv = [part.replace("{tmp}", str(tmp_path)).replace("{run}", str(run)) for part in argv]
    code, out, _ = run_cli([*argv, "--json"], capsys)
    assert code == 0, out
    assert isinstance(json.loads(out), (dict, list))
    if argv[0] == "test":
        assert seen["reference"] is None  # --reference none: no quality check, and no FP32 looked up
    if argv[0] == "run":
        assert seen["params"] == {"repeats": 1}


def test_bench_and_test_never_write_into_the_current_folder() -> None:
    parser = cli.build_parser()
    for argv in (["bench", "m"], ["test", "m"]):
        out = Path(parser.parse_args(argv).out)
        assert out == common.DEFAULT_RESULTS_DIR and out != Path(".")


def test_set_is_checked_by_the_parameter_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_params.parse_assignment("precisions=[fp32, int4]") == ("precisions", ["fp32", "int4"])
    assert run_params.parse_assignment("precisions=int4") == ("precisions", ["int4"])
    assert run_params.parse_assignment("name_prefix=007") == ("name_prefix", "007")  # text stays text
    assert run_params.parse_assignment("finetune=false") == ("finetune", False)
    for text, says in (("repeats=0", "from 1 to 1000"), ("repeats", "KEY=VALUE"), ("nope=1", "unknown parameter"),
                       ("precisions=[int3]", "choose one of")):
        with pytest.raises(ParamsError, match=says):
            run_params.parse_assignment(text)
    code, _, err = run_cli(["run", "--set", "repeats=0", "-o", str(tmp_path / "r")], capsys)
    assert code == 2 and "repeats is 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(["run", "-o", str(tmp_path / "r")], capsys)
    assert code == 2 and "--set KEY=VALUE" in err


def test_cli_ranges_come_from_the_parameter_model(capsys: pytest.CaptureFixture[str]) -> None:
    high = dict(run_params.RunParams.__dataclass_fields__["repeats"].metadata)["high"]
    parser = cli.build_parser()
    assert parser.parse_args(["bench", "m", "--repeats", str(high)]).repeats == high
    code, _, err = run_cli(["bench", "m", "--repeats", str(high + 1)], capsys)
    assert code == 2 and f"{high + 1} is out of range: use 1..{high}" in err
