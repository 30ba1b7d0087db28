"""Stage 1: configs are right, bad input is refused before work, outputs are atomic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit.core import workers
from slmops.toolkit.core.errors import (
    InvalidOptionError,
    ModelFolderError,
    ToolFailedError,
    UnsupportedArchitectureError,
)
from slmops.toolkit.domain import recipe_choice
from slmops.toolkit.domain.options import INT4_RECIPES, Int4Options, Method, Precision
from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.domain.results.recipes import RecipeResult
from slmops.toolkit.stages import convert
from slmops.toolkit.stages.convert_plan import (
    OLIVE_CONFIG,
    ConvertSpec,
    build_olive_config,
    builder_command,
    needs_quantizer,
    olive_command,
    quant_plan,
)


def spec(model: Path, out: Path, **kw) -> ConvertSpec:
    return ConvertSpec(model, out, **kw)


def test_builder_int4_is_a_lean_fp32_export_then_the_quantizer_with_its_options(tmp_path: Path) -> None:
    s = spec(Path("m"), Path("o"), int4=Int4Options(block_size=128, symmetric=False, accuracy_level=1))
    command = builder_command(s, tmp_path / "o", tmp_path / "c")
    assert command[2:4] == ["slmops.toolkit.core.workers", "slmops.toolkit.runtimes.genai_builder"]
    assert command[command.index("-p") + 1] == "fp32"
    assert command[command.index("-e") + 1] == "cpu"
    assert "hf_remote=false" in command[command.index("--extra_options") + 1:]
    plan = quant_plan(s)
    assert (plan.bits, plan.block_size, plan.symmetric, plan.accuracy_level) == (4, 128, False, 1)
    assert plan.lm_head_with_body  # the builder's own INT4: the LM head through ORT's quantizer too


def test_int8_is_built_as_fp32_first(tmp_path: Path) -> None:
    command = builder_command(spec(Path("m"), Path("o"), precision=Precision.INT8), tmp_path, tmp_path)
    assert command[command.index("-p") + 1] == "fp32"
    assert not any(arg.startswith("int4_") for arg in command)


def test_olive_config_follows_the_tutorial(tmp_path: Path) -> None:
    config = build_olive_config(spec(Path("/m"), Path("o"), int4=Int4Options(block_size=128, symmetric=False),
                                       method=Method.OLIVE_CONFIG), tmp_path / "out", tmp_path / "cache")
    assert config["input_model"] == {"type": "HfModel", "model_path": "/m", "task": "text-generation"}
    system = config["systems"]["local_system"]
    assert system["type"] == "LocalSystem"
    assert system["accelerators"][0]["execution_providers"] == ["CPUExecutionProvider"]
    builder = config["passes"]["builder"]
    assert builder == {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 128,
                       "int4_is_symmetric": False, "int4_accuracy_level": 4}
    assert config["output_dir"] == str(tmp_path / "out")


def test_olive_command_is_the_tutorials_method_1() -> None:
    command = olive_command(spec(Path("/m"), Path("o"), method=Method.OLIVE), Path("/o"))
    # Olive's CLI through our launcher: telemetry off from the start
    assert command[2:5] == ["slmops.toolkit.core.workers", "slmops.toolkit.runtimes.olive_cli", "auto-opt"]
    for flag, value in [("--model_name_or_path", "/m"), ("--device", "cpu"),
                        ("--provider", "CPUExecutionProvider"), ("--precision", "int4"), ("--output_path", "/o")]:
        assert command[command.index(flag) + 1] == value
    assert "--use_model_builder" in command


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"precision": "fp16"}, InvalidOptionError, "execution-provider cuda"),
        ({"precision": "int2"}, InvalidOptionError, "precision in"),
        ({"method": "optimum"}, InvalidOptionError, "method in"),
        ({"int4": {"block_size": 100}}, InvalidOptionError, "block_size"),
        ({"int4": {"accuracy_level": 9}}, InvalidOptionError, "accuracy_level"),
        ({"int4": {"algorithm": "awq"}}, InvalidOptionError, "hqq"),
        ({"int4": {"lm_head": "int2"}}, InvalidOptionError, "lm_head"),
        # The tiny model's hidden size is 64: a quantized table needs a block size dividing it.
        ({"int4": {"block_size": 128, "embeddings": "int4"}}, InvalidOptionError, r"\[16, 32, 64\]"),
        ({"execution_provider": "tpu"}, InvalidOptionError, "execution_provider"),
    ],
)
def test_bad_options_are_refused_before_any_work(tiny_model: Path, tmp_path: Path, change: dict, error: type,
                                                 says: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(error, match=says):
        if "int4" in change:
            change = {**change, "int4": Int4Options(**change["int4"])}
        convert.convert(spec(tiny_model, out, **change), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_routes_split_between_builder_and_quantizer(tmp_path: Path) -> None:
    rtn = spec(Path("m"), Path("o"), int4=Int4Options(algorithm="rtn"), method=Method.OLIVE_CONFIG)
    assert not needs_quantizer(rtn)  # Olive's builder pass makes it itself
    assert build_olive_config(rtn, tmp_path, tmp_path)["passes"]["builder"]["extra_options"] == {
        "shared_embeddings": False}
    assert needs_quantizer(spec(Path("m"), Path("o"), int4=Int4Options(algorithm="rtn")))
    for options in [INT4_RECIPES["compact"], INT4_RECIPES["hqq"], Int4Options(algorithm="k_quant"),
                    Int4Options(lm_head="fp32")]:
        s = spec(Path("m"), Path("o"), int4=options)
        assert needs_quantizer(s)
        command = builder_command(s, tmp_path, tmp_path)
        assert command[command.index("-p") + 1] == "fp32"
        assert build_olive_config(s, tmp_path, tmp_path)["passes"]["builder"] == {"type": "ModelBuilder",
                                                                                    "precision": "fp32"}
    # olive auto-opt takes no INT4 options, so non-default ones go through the quantizer there too.
    assert needs_quantizer(spec(Path("m"), Path("o"), method=Method.OLIVE, int4=Int4Options(block_size=64)))
    assert not needs_quantizer(spec(Path("m"), Path("o"), method=Method.OLIVE))
    plan = quant_plan(spec(Path("m"), Path("o"), int4=INT4_RECIPES["hqq"]))
    assert (plan.bits, plan.algorithm, plan.lm_head_bits, plan.embedding_bits) == (4, "hqq", 8, 8)
    plan = quant_plan(spec(Path("m"), Path("o"), precision=Precision.INT8), hidden_size=576)
    assert (plan.bits, plan.lm_head_bits, plan.embedding_bits) == (8, 8, 8)


@pytest.mark.parametrize("bits", [4, 8])
def test_table_quantization_round_trips_within_half_a_step(bits: int) -> None:
    import numpy as np

    from slmops.toolkit.weights.table_layout import quantize_table

    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, 64)).astype(np.float32)
    data, scales = quantize_table(table, bits, 32)
    assert data.shape == (6, 64 * bits // 8) and scales.shape == (6, 2)
    if bits == 4:  # unpack: low nibble first
        values = np.stack([data & 0xF, data >> 4], axis=-1).reshape(6, 64)
    else:
        values = data
    restored = (values.astype(np.float32) - 2 ** (bits - 1)).reshape(6, 2, 32) * scales[..., None]
    error = np.abs(restored.reshape(6, 64) - table)
    assert (error <= np.repeat(scales, 32, axis=1) / 2 + 1e-6).all()
    assert error.max() > 0  # it did quantize


def test_missing_and_non_hf_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such folder"):
        convert.convert(spec(tmp_path / "nope", tmp_path / "out"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="config.json"):
        convert.convert(spec(tmp_path / "empty", tmp_path / "out"), progress=False)


def test_unsupported_architecture_lists_the_supported_ones(tiny_model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    shutil.copytree(tiny_model, fake)  # a copy: links leading outside a model folder are refused
    config = json.loads((tiny_model / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError) as caught:
        convert.convert(spec(fake, tmp_path / "out"), progress=False)
    assert "LlamaForCausalLM" in caught.value.supported and "Qwen2ForCausalLM" in str(caught.value)


def test_failed_tool_leaves_existing_model_untouched(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "genai_config.json").write_text("{\"good\": true}")

    def broken(command, *, log_path, cwd=None, name=None):
        Path(command[command.index("-o") + 1]).mkdir(parents=True)
        (Path(command[command.index("-o") + 1]) / "model.onnx").write_text("half")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("boom")
        raise ToolFailedError("builder", 1, log_path, "boom")

    monkeypatch.setattr(workers, "run_tool", broken)
    with pytest.raises(ToolFailedError):
        convert.convert(spec(tiny_model, target), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "genai_config.json").read_text() == "{\"good\": true}"


def test_interrupt_leaves_nothing_behind(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*_args, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "run_tool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert.convert(spec(tiny_model, tmp_path / "model"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_large_weight_is_quantized_in_slices_that_stack_to_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from slmops.toolkit.weights import quantize

    weight = np.random.default_rng(1).normal(size=(64, 200)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/model/layers.0/mlp/up_proj/MatMul")
    opsets = [helper.make_opsetid("", 21)]
    for plan in (QuantPlan(), QuantPlan(bits=8), QuantPlan(symmetric=False), QuantPlan(algorithm="rtn"),
                 QuantPlan(algorithm="k_quant")):
        whole_nodes, whole = quantize._quantize_one(node, weight, plan, opsets)
        monkeypatch.setattr(quantize, "CHUNK_BYTES", 64 * 4 * 48)  # 48 columns a slice: 5 slices, the last one short
        sliced_nodes, sliced = quantize._quantize_one(node, weight, plan, opsets)
        monkeypatch.undo()
        assert [onnx.helper.printable_node(n) for n in sliced_nodes] == [onnx.helper.printable_node(n)
                                                                          for n in whole_nodes]
        assert [i.name for i in sliced] == [i.name for i in whole]
        for a, b in zip(sliced, whole, strict=True):
            assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)), (plan, a.name)
    assert "hqq" not in quantize.SLICEABLE  # its early stop looks at the whole tensor: quantized whole


def test_recommendation_prefers_fast_recipes_that_meet_the_targets() -> None:
    def result(name: str, ratio: float, top1: float, tps: float) -> RecipeResult:
        return RecipeResult(name, "", "", 100 * ratio, ratio, top1, 0.1, 10, 9, tps)

    fast_winner = [result("a", 0.37, 0.9, 100), result("b", 0.2, 0.88, 90), result("c", 0.15, 0.6, 110)]
    assert recipe_choice.recommend_recipe(fast_winner)[0] == "b"
    slow_only = [result("a", 0.37, 0.66, 100), result("h", 0.21, 0.98, 5), result("c", 0.19, 0.72, 110)]
    name, why = recipe_choice.recommend_recipe(slow_only)
    assert name == "c" and "`h`" in why and "No fast recipe" in why


def test_olive_runs_with_telemetry_off_before_its_heartbeat(monkeypatch) -> None:
    from olive.telemetry import telemetry as T

    from slmops.toolkit.runtimes import genai_builder, olive_cli

    # The builder's patches load ONNX Runtime GenAI, which cannot share this process with Foundry Local's build.
    monkeypatch.setattr(genai_builder, "install", lambda: None)
    beats: list[int] = []
    monkeypatch.setattr(T.Telemetry, "_log_heartbeat", lambda self: beats.append(1))
    monkeypatch.setattr(T.Telemetry, "_is_ci_environment", T.Telemetry.__dict__["_is_ci_environment"])  # restored after
    for var in T._CI_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(T.Telemetry, "_instance", None)
    T.Telemetry()
    assert beats == [1]  # Olive's own start-up queues a heartbeat, even with OLIVE_DISABLE_TELEMETRY=1
    monkeypatch.setattr(T.Telemetry, "_instance", None)
    monkeypatch.setattr("sys.argv", ["olive", "run", "--config", "/no/such/config.json"])
    with pytest.raises(Exception, match="config.json"):  # fails after Olive's start-up, before any work
        olive_cli.main()
    assert beats == [1]  # ours never does


def test_olive_config_dry_run_writes_config_only(tiny_model: Path, tmp_path: Path) -> None:
    result = convert.convert(spec(tiny_model, tmp_path / "o", method=Method.OLIVE_CONFIG), progress=False, dry_run=True)
    assert [p.name for p in result.output_dir.iterdir()] == [OLIVE_CONFIG]
    config = json.loads((result.output_dir / OLIVE_CONFIG).read_text())
    assert config["passes"]["builder"]["type"] == "ModelBuilder"


def test_too_little_disk_is_refused_before_any_work(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9, 1000))
    with pytest.raises(ModelFolderError, match="MB free"):
        convert.convert(spec(tiny_model, tmp_path / "out"), progress=False)
    assert list(tmp_path.iterdir()) == []
