"""Stage 1: configs are right, bad input is refused before work, outputs are atomic."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from slmops.toolkit.core import workers
from slmops.toolkit.core.artifacts import dir_size_mb
from slmops.toolkit.core.errors import (
    InsufficientMemoryError,
)
from slmops.toolkit.domain.options import INT4_RECIPES, Method, Precision
from slmops.toolkit.domain.results.conversion import read_conversions, read_manifest
from slmops.toolkit.runtimes import genai
from slmops.toolkit.stages import convert, convert_checks
from slmops.toolkit.stages.convert_plan import OLIVE_CONFIG, ConvertSpec
from tests.unit.test_convert import spec


@pytest.fixture(scope="module")
def build_once(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], convert.ConvertResult]:
    """``build_once(precision)``: the tiny model converted at ``precision`` with the default options, alone in a
    folder of its own; made on first use and shared by this module's tests, which only read it."""

    @functools.cache
    def build(precision: str) -> convert.ConvertResult:
        out = tmp_path_factory.mktemp(f"built-{precision}") / precision
        return convert.convert(spec(tiny_model, out, precision=Precision(precision)), progress=False)

    return build


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_builder_route_converts_for_real(build_once: Callable[[str], convert.ConvertResult], precision: str) -> None:
    result = build_once(precision)
    files = {p.name for p in result.output_dir.iterdir()}
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "manifest.json"} <= files
    manifest = read_manifest(result.output_dir)
    assert manifest == result.manifest  # what was written is what the one reader reads back
    assert manifest.precision == precision and manifest.method == "builder"
    assert manifest.peak_rss_mib > 50 and manifest.wall_s > 0
    assert manifest.size_mb == pytest.approx(dir_size_mb(result.output_dir) - 0.002, abs=0.01)
    assert manifest.versions["onnxruntime-genai"] == "0.14.1"
    assert len(manifest.source_fingerprint) == 16
    assert [p.name for p in result.output_dir.parent.iterdir()] == [precision]  # no scratch left


def test_int8_is_8bit_weights_everywhere_and_int4_keeps_the_builders_layout(
        build_once: Callable[[str], convert.ConvertResult]) -> None:
    import onnx

    int8 = build_once("int8")
    graph = onnx.load(str(int8.output_dir / "model.onnx"), load_external_data=False).graph
    bits = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"}
    assert bits == {8}
    assert int8.manifest.weights.parameters.keys() == {"int8"}  # embeddings and LM head too
    assert int8.manifest.quantizer.bits == 8
    int4 = build_once("int4")
    assert int4.manifest.weights.lm_head == "int4" and int4.manifest.weights.embeddings == "fp32"
    assert int4.manifest.quantizer.lm_head_with_body  # the builder's INT4, made tensor by tensor


def _tensors_and_nodes(model_file: Path) -> tuple[dict, list]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_file))
    tensors = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes = [(n.op_type, tuple(n.input), sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute))
             for n in model.graph.node]
    return tensors, sorted(nodes, key=repr)


@pytest.mark.parametrize("tied", [False, True])
def test_builder_route_int4_equals_the_builders_own_int4(tmp_path: Path, tied: bool) -> None:
    """The lean path (FP32 export, then ORT's quantizer one MatMul at a time) writes the builder's INT4 exactly."""
    import numpy as np

    from tests.models import make_tiny_model

    model = make_tiny_model(tmp_path / "m", tie_embeddings=tied, seed=3)
    ours = convert.convert(spec(model, tmp_path / "ours"), progress=False).output_dir
    own = workers.python_module("onnxruntime_genai.models.builder", "-i", str(model), "-o", str(tmp_path / "own"),
                                "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "cache"),
                                "--extra_options", "hf_token=false", "hf_remote=false")
    workers.run_tool(own, log_path=tmp_path / "own.log", name="builder int4")
    mine, theirs = _tensors_and_nodes(ours / "model.onnx"), _tensors_and_nodes(tmp_path / "own" / "model.onnx")
    assert mine[1] == theirs[1]  # same graph
    assert mine[0].keys() == theirs[0].keys()
    for name, array in theirs[0].items():
        assert np.array_equal(mine[0][name], array), name


def test_the_manifest_puts_the_predicted_peak_beside_the_measured_one(tiny_int4: Path) -> None:
    memory = read_manifest(tiny_int4).memory
    assert memory.measured_peak_mib > 0 and memory.checked
    assert set(memory.steps) == {"export (model builder, fp32)", "quantize (tensor by tensor)",
                                 "parity check: the reference (transformers)",
                                 "parity check: the FP32 model (onnxruntime)"}
    assert set(memory.measured_steps) == {"builder", "quantize", "parity"}
    assert memory.measured_peak_mib == max(memory.measured_steps.values())
    # On a tiny model both are the processes' own footprint: the prediction is in the right range.
    assert 0.5 < memory.predicted_peak_mib / memory.measured_peak_mib < 3


def test_a_conversion_that_would_not_fit_is_refused_before_anything_starts(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_checks, "available_mib", lambda: 50.0)  # a machine with 50 MiB free
    out = tmp_path / "models" / "int4"
    with pytest.raises(InsufficientMemoryError) as refused:
        convert.convert_all(tiny_model, ["fp32", "int4"], tmp_path / "models", progress=False)
    message = str(refused.value)
    assert "needs about" in message and "0.0 GiB is available" in message and "Nothing was started" in message
    assert "--skip-memory-check" in message and "more memory" in message
    assert not (tmp_path / "models").exists()
    with pytest.raises(InsufficientMemoryError, match="use --method builder"):
        convert.convert(spec(tiny_model, out, method=Method.OLIVE), progress=False)
    assert not out.exists()
    # The user may insist: the prediction is still recorded, marked unchecked.
    done = convert.convert(spec(tiny_model, out), progress=False, memory_check=False)
    assert done.manifest.memory.checked is False


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tied") / "qwen2", tie_embeddings=True)


def test_tied_table_is_stored_once_and_follows_fp32(tied_model: Path, tmp_path: Path) -> None:

    manifests = convert.convert_all(tied_model, ["int4", "fp32"], tmp_path, int4=INT4_RECIPES["int8-head"],
                              progress=False)
    fp32, int4 = manifests  # FP32 is built first whatever the order asked
    assert fp32.precision == "fp32" and int4.fp32_size_from.startswith("measured")
    assert int4.size_ratio_vs_fp32 == pytest.approx(int4.size_mb / fp32.size_mb, rel=0.01)
    weights = int4.weights
    assert (weights.lm_head, weights.embeddings) == ("int8", "int8")
    vocab_x_hidden = fp32.weights.parameters["fp32"] - weights.parameters["int4"]
    assert weights.parameters["int8"] == vocab_x_hidden  # one table, not two
    same, quantized = genai.agreement(tmp_path / "fp32", {"same": tmp_path / "fp32",
                                                               "int4": tmp_path / "int4"})
    assert same.top1_agreement == 1.0 and same.kl_divergence == pytest.approx(0, abs=1e-9)
    assert 0 < quantized.kl_divergence < 0.05 and quantized.top1_agreement > 0.5


def test_manifest_estimates_fp32_size_without_a_sibling_build(tiny_model: Path,
                                                               build_once: Callable[[str], convert.ConvertResult]) -> None:
    from slmops.toolkit.weights.checkpoints import inspect_source

    m = build_once("int4").manifest
    assert m.fp32_size_from.startswith("estimated")
    assert m.fp32_size_mb == pytest.approx(inspect_source(tiny_model).parameters * 4 / 1e6, abs=0.01)
    assert m.size_vs_tutorial == pytest.approx(m.size_ratio_vs_fp32 / 0.125, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["olive", "olive-config"])
def test_olive_routes_convert_for_real(tiny_model: Path, tmp_path: Path, method: str) -> None:
    result = convert.convert(spec(tiny_model, tmp_path / method, method=Method(method)), progress=False)
    assert (result.output_dir / "genai_config.json").is_file()
    assert result.manifest.method == method
    if method == "olive-config":
        assert (result.output_dir / OLIVE_CONFIG).is_file()
    assert not list(tmp_path.glob(".*"))  # Olive's cache went with the scratch folder


def test_fp16_builds_for_a_gpu_provider(tiny_model: Path, tmp_path: Path) -> None:
    result = convert.convert(spec(tiny_model, tmp_path / "fp16", precision=Precision.FP16, execution_provider="cuda"),
                       progress=False)
    assert result.manifest.execution_provider == "cuda"
    assert result.manifest.weights.parameters.keys() == {"fp16"}
    config = json.loads((result.output_dir / "genai_config.json").read_text())
    assert "cuda" in json.dumps(config["model"]["decoder"]["session_options"]["provider_options"])


def test_int8_and_int4_quantize_the_runs_fp32_build_instead_of_exporting_again(
        tiny_model: Path, tmp_path: Path, build_once: Callable[[str], convert.ConvertResult]) -> None:
    import hashlib

    from tests.models import make_tiny_model

    manifests = convert.convert_all(tiny_model, ["int4", "fp32", "int8"], tmp_path / "run", progress=False)
    fp32 = str((tmp_path / "run" / "fp32").resolve())
    by_precision = {m.precision: m for m in manifests}
    assert read_conversions(tmp_path / "run" / "convert.json") == manifests  # written once, read by its one reader
    for precision in ("int8", "int4"):
        made = by_precision[precision]
        assert made.quantized_from == fp32
        assert not any("slmops.toolkit.runtimes.genai_builder" in c for c in made.commands)  # no export
        assert [c.build for c in made.parity.checks] == [precision]  # the FP32 passed its own check
    # The same bytes as an INT4 quantized from a fresh export.
    fresh = build_once("int4")  # ConvertSpec(tiny_model, OUT, Precision.INT4): exported afresh
    assert fresh.manifest.quantized_from is None

    def digest(folder: Path) -> str:
        return hashlib.sha256((folder / "model.onnx.data").read_bytes()).hexdigest()

    assert digest(tmp_path / "run" / "int4") == digest(fresh.output_dir)
    # An FP32 build of another model is not used: the export runs.
    other = make_tiny_model(tmp_path / "other" / "qwen2", seed=1)
    spec = ConvertSpec(other, tmp_path / "other-int4", Precision.INT4, quantize_from=tmp_path / "run" / "fp32")
    assert convert.convert(spec, progress=False).manifest.quantized_from is None
