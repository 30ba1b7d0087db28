"""The parameter model: one source for notebooks, the demo, `slmops run` and CLI defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import ParamsError, SlmopsError
from slmops.toolkit.domain import run_params
from slmops.toolkit.orchestration import pipeline


@pytest.mark.parametrize(("mapping", "says"), [
    ({"precisions": "int4"}, "precisions must be a list"),  # once iterated character by character
    ({"precisions": ["int3"]}, "choose one of fp32"),
    ({"repeats": "3"}, "repeats must be a whole number"),
    ({"repeats": 0}, "from 1 to"),
    ({"repeats": True}, "repeats must be a whole number"),  # a bool is not a count
    ({"compare_recipes": 1}, "compare_recipes must be true or false"),
    ({"prompt_lengths": [16, -1]}, "prompt_lengths is -1"),
    ({"gen_lengths": [1]}, "gen_lengths is 1"),
    ({"int4_block_size": 48}, "choose one of 0, 16, 32"),
    ({"method": "onnx"}, "choose one of builder"),
    ({"template": "custom"}, "choose one of auto"),  # custom needs strings a params file cannot give
    ({"typo": 1}, "unknown parameter 'typo'"),
    ({"repetition_penalty": 2.5}, "repetition_penalty is 2.5; it must be from 1 to 2"),
    ({"repetition_penalty": "none"}, "repetition_penalty must be a number"),
    ({"repetition_penalty": True}, "repetition_penalty must be a number"),
])
def test_wrong_values_are_refused_with_the_parameter_named(mapping: dict, says: str) -> None:
    with pytest.raises(ParamsError, match=says):
        run_params.parse(mapping, source="p.yaml")


def test_defaults_are_the_demo_and_round_trip() -> None:
    defaults = run_params.DEFAULTS.as_dict()
    assert run_params.parse(defaults) == run_params.DEFAULTS
    assert defaults["precisions"] == ["fp32", "int8", "int4"] and defaults["checklist_requests"] == 120
    assert defaults["finetune"] is True and defaults["adapter"] == ""  # the demo deploys the bundled fine-tune
    assert run_params.parse({"precisions": ["int4"]}).precisions == ["int4"]
    assert run_params.RunParams().precisions is not run_params.RunParams().precisions  # no shared mutable default
    assert set(run_params.PATH_PARAMS) == {"model_dir", "adapter", "cases", "cache_dir"}


def test_the_cli_takes_its_defaults_from_the_model(tmp_path: Path) -> None:
    from slmops.toolkit.cli.pipeline import cli_run

    parser = cli.build_parser()
    # Unless given, test and bench take the run folder's own parameters, else the model's defaults.
    bench = parser.parse_args(["bench", "m", "--out", str(tmp_path)])
    run = cli_run(bench, prompt_lengths=bench.prompt_lengths, repeats=bench.repeats, warmup=bench.warmup,
                  gen_lengths=bench.gen_tokens).params
    assert run.prompt_lengths == run_params.DEFAULTS.prompt_lengths and run.repeats == run_params.DEFAULTS.repeats
    assert run.warmup == run_params.DEFAULTS.warmup and run.gen_lengths == run_params.DEFAULTS.gen_lengths
    test = parser.parse_args(["test", "m", "--out", str(tmp_path)])
    assert cli_run(test, checklist_requests=test.requests).params.checklist_requests == run_params.DEFAULTS.checklist_requests
    (tmp_path / "params.json").write_text(json.dumps({"checklist_requests": 7, "run_dir": str(tmp_path)}))
    assert cli_run(test, checklist_requests=test.requests).params.checklist_requests == 7  # the run's own
    given = parser.parse_args(["test", "m", "--out", str(tmp_path), "--requests", "9"])
    assert cli_run(given, checklist_requests=given.requests).params.checklist_requests == 9  # given wins


def test_a_sweep_is_checked_and_capped_before_anything_runs(tmp_path: Path) -> None:
    file = tmp_path / "sweep.yaml"
    for text, says in [("sweep:\n  repeats: [1, two]\n", "sweep: repeats must be a whole number"),
                       ("sweep:\n  int4_block_size: 32\n", "non-empty lists"),
                       ("sweep:\n  block: [32]\n", "unknown parameter 'block'")]:
        file.write_text(text)
        with pytest.raises(ParamsError, match=says):
            pipeline.load_params(file)
    file.write_text("sweep:\n  repeats: [1, 2, 3, 4, 5, 6, 7, 8]\n  warmup: [0, 1, 2, 3, 4, 5, 6, 7, 8]\n")
    with pytest.raises(ParamsError, match=r"72 combinations.*--max-runs"):
        pipeline.load_params(file)
    assert pipeline.load_params(file, max_runs=72)["sweep"]["warmup"][-1] == 8
    out = tmp_path / "out"
    with pytest.raises(ParamsError, match="72 combinations"):
        pipeline.run_sweep(pipeline.load_params(file, max_runs=72), out)
    assert not out.exists()  # refused before anything was written
    assert cli.main(["run", "--params", str(file), "--out", str(out)]) == 2 and not out.exists()


def test_bad_params_reach_run_pipeline_through_the_api_too(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="precisions must be a list"):
        pipeline.run_pipeline({"precisions": "int4"}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_non_utf8_params_file_is_a_clear_error(tmp_path: Path) -> None:
    file = tmp_path / "p.yaml"
    file.write_bytes(b"precisions: [\xff]\n")
    with pytest.raises(Exception, match="not UTF-8") as caught:
        pipeline.load_params(file)
    assert isinstance(caught.value, SlmopsError)


def test_a_packaged_models_demo_registers_with_its_own_repetition_penalty_and_int4_recipe(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.toolkit.stages import register
    from slmops.toolkit.weights import packaged_build

    seen = {}
    monkeypatch.setattr(packaged_build, "materialize", lambda key: tmp_path / key)
    monkeypatch.setattr(pipeline, "run_pipeline", lambda params, out, progress: seen.update(params) or Path(out))
    pipeline.demo(tmp_path / "gemma", model="gemma3-270m", progress=False)
    assert seen["repetition_penalty"] == 1.0 and seen["template"] == "gemma"
    assert seen["int4_recipe"] == "mixed" != run_params.DEFAULTS.int4_recipe  # the builder's INT4 fails Gemma's parity gate
    assert run_params.DEFAULTS.repetition_penalty == register.ModelConfig().repetition_penalty == 1.1  # one source: the tutorial's
    assert run_params.parse({"repetition_penalty": 1}).repetition_penalty == 1  # a whole number is a number
    assert run_params.parse_assignment("repetition_penalty=1.05") == ("repetition_penalty", 1.05)
