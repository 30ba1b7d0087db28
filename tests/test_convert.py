"""Stage 1: configs are right, bad input is refused before work, outputs are atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit import convert as C
from toolkit import tools
from toolkit.errors import InvalidOptionError, ModelFolderError, ToolFailedError, UnsupportedArchitectureError


def spec(model: Path, out: Path, **kw) -> C.ConvertSpec:
    return C.ConvertSpec(model, out, **kw)


def test_builder_command_carries_int4_options(tmp_path: Path) -> None:
    s = spec(Path("m"), Path("o"), int4=C.Int4Options(block_size=128, symmetric=False, accuracy_level=1))
    command = C.builder_command(s, tmp_path / "o", tmp_path / "c")
    assert command[command.index("-p") + 1] == "int4"
    assert command[command.index("-e") + 1] == "cpu"
    extra = command[command.index("--extra_options") + 1:]
    assert {"int4_block_size=128", "int4_is_symmetric=false", "int4_accuracy_level=1", "hf_remote=false"} <= set(extra)


def test_int8_is_built_as_fp32_first(tmp_path: Path) -> None:
    command = C.builder_command(spec(Path("m"), Path("o"), precision=C.Precision.INT8), tmp_path, tmp_path)
    assert command[command.index("-p") + 1] == "fp32"
    assert not any(arg.startswith("int4_") for arg in command)


def test_olive_config_follows_the_tutorial(tmp_path: Path) -> None:
    config = C.build_olive_config(spec(Path("/m"), Path("o"), int4=C.Int4Options(block_size=128, symmetric=False)),
                                  tmp_path / "out", tmp_path / "cache")
    assert config["input_model"] == {"type": "HfModel", "model_path": "/m", "task": "text-generation"}
    system = config["systems"]["local_system"]
    assert system["type"] == "LocalSystem"
    assert system["accelerators"][0]["execution_providers"] == ["CPUExecutionProvider"]
    builder = config["passes"]["builder"]
    assert builder == {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 128,
                       "int4_is_symmetric": False, "int4_accuracy_level": 4}
    assert config["output_dir"] == str(tmp_path / "out")


def test_olive_command_is_the_tutorials_method_1() -> None:
    command = C.olive_command(spec(Path("/m"), Path("o")), Path("/o"))
    assert command[2:4] == ["olive", "auto-opt"]
    for flag, value in [("--model_name_or_path", "/m"), ("--device", "cpu"),
                        ("--provider", "CPUExecutionProvider"), ("--precision", "int4"), ("--output_path", "/o")]:
        assert command[command.index(flag) + 1] == value
    assert "--use_model_builder" in command


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"precision": "fp16"}, InvalidOptionError),
        ({"precision": "int2"}, InvalidOptionError),
        ({"precision": "int8", "method": "olive"}, InvalidOptionError),
        ({"int4": C.Int4Options(block_size=100)}, InvalidOptionError),
        ({"int4": C.Int4Options(accuracy_level=9)}, InvalidOptionError),
    ],
)
def test_bad_options_are_refused_before_any_work(tiny_model: Path, tmp_path: Path, change: dict, error: type) -> None:
    out = tmp_path / "out"
    with pytest.raises(error):
        C.convert(spec(tiny_model, out, **change), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_missing_and_non_hf_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such folder"):
        C.convert(spec(tmp_path / "nope", tmp_path / "out"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="config.json"):
        C.convert(spec(tmp_path / "empty", tmp_path / "out"), progress=False)


def test_unsupported_architecture_lists_the_supported_ones(tiny_model: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    for item in tiny_model.iterdir():
        (fake / item.name).symlink_to(item)
    (fake / "config.json").unlink()
    config = json.loads((tiny_model / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    with pytest.raises(UnsupportedArchitectureError) as caught:
        C.convert(spec(fake, tmp_path / "out"), progress=False)
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

    monkeypatch.setattr(tools, "run_tool", broken)
    with pytest.raises(ToolFailedError):
        C.convert(spec(tiny_model, target), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "genai_config.json").read_text() == "{\"good\": true}"


def test_interrupt_leaves_nothing_behind(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*_args, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tools, "run_tool", interrupted)
    with pytest.raises(KeyboardInterrupt):
        C.convert(spec(tiny_model, tmp_path / "model"), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_builder_route_converts_for_real(tiny_model: Path, tmp_path: Path, precision: str) -> None:
    result = C.convert(spec(tiny_model, tmp_path / precision, precision=C.Precision(precision)), progress=False)
    files = {p.name for p in result.output_dir.iterdir()}
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "manifest.json"} <= files
    manifest = C.read_manifest(result.output_dir)
    assert manifest["precision"] == precision and manifest["method"] == "builder"
    assert manifest["peak_rss_mb"] > 50 and manifest["wall_s"] > 0
    assert manifest["size_mb"] == pytest.approx(C.dir_size_mb(result.output_dir) - 0.002, abs=0.01)
    assert manifest["versions"]["onnxruntime-genai"] == "0.14.1"
    assert len(manifest["source_fingerprint"]) == 16
    assert [p.name for p in tmp_path.iterdir()] == [precision]  # no scratch left


def test_int8_has_int8_weights_and_int4_has_nbits(tiny_model: Path, tmp_path: Path) -> None:
    import onnx

    int8 = C.convert(spec(tiny_model, tmp_path / "int8", precision=C.Precision.INT8), progress=False)
    ops = {node.op_type for node in onnx.load(str(int8.output_dir / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMulInteger" in ops
    int4 = C.convert(spec(tiny_model, tmp_path / "int4"), progress=False)
    ops = {node.op_type for node in onnx.load(str(int4.output_dir / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops


def test_olive_config_dry_run_writes_config_only(tiny_model: Path, tmp_path: Path) -> None:
    result = C.convert(spec(tiny_model, tmp_path / "o", method=C.Method.OLIVE_CONFIG), progress=False, dry_run=True)
    assert [p.name for p in result.output_dir.iterdir()] == [C.OLIVE_CONFIG]
    config = json.loads((result.output_dir / C.OLIVE_CONFIG).read_text())
    assert config["passes"]["builder"]["type"] == "ModelBuilder"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["olive", "olive-config"])
def test_olive_routes_convert_for_real(tiny_model: Path, tmp_path: Path, method: str) -> None:
    result = C.convert(spec(tiny_model, tmp_path / method, method=C.Method(method)), progress=False)
    assert (result.output_dir / "genai_config.json").is_file()
    assert result.manifest["method"] == method
    if method == "olive-config":
        assert (result.output_dir / C.OLIVE_CONFIG).is_file()
    assert not list(tmp_path.glob(".*"))  # Olive's cache went with the scratch folder
