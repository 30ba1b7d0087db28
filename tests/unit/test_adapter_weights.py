"""``--adapter NAME=FILE`` values and adapter files checked against a base graph's LoRA inputs (no model loaded:
a graph of inputs only, written with onnx's helper, and adapter files written by ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint.adapters import parse_option
from slmops.toolkit.runtimes.adapter_weights import load_adapter, lora_inputs
from slmops.toolkit.weights.lora_apart import write_onnx_adapter

A, B = "model.layers.0.attn.q_proj.lora_A.MatMul.weight", "model.layers.0.attn.q_proj.lora_B.MatMul.weight"


def _graph(path: Path, lora: bool = True) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rank = "lora_r.model.layers.0.attn.q_proj"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    if lora:
        inputs += [helper.make_tensor_value_info(A, TensorProto.FLOAT, [64, rank]),
                   helper.make_tensor_value_info(B, TensorProto.FLOAT, [rank, 32])]
    output = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["ids"])], "g", inputs, [output])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_an_adapter_option_is_a_name_and_a_file_or_refused_naming_the_form() -> None:
    assert parse_option("support = outputs/a.onnx_adapter") == ("support", Path("outputs/a.onnx_adapter"))
    for bad in ("support", "=a.onnx_adapter", "support=", "two words=a.onnx_adapter"):
        with pytest.raises(InputError, match="is not NAME=FILE"):
            parse_option(bad)


def test_an_adapter_file_loads_once_when_every_matrix_is_a_lora_input_of_the_base(tmp_path: Path) -> None:
    inputs = lora_inputs(_graph(tmp_path / "model.onnx"))
    assert set(inputs) == {A, B}
    file = tmp_path / "rank8.onnx_adapter"
    write_onnx_adapter(file, {A: np.ones((64, 8), np.float32), B: np.ones((8, 32), np.float32)})
    weights = load_adapter(file, inputs, "base")  # any rank: the rank's axis is symbolic
    assert set(weights.values) == {A, B} and weights.nbytes == 4 * (64 * 8 + 8 * 32)
    assert np.array_equal(weights.values[A].numpy(), np.ones((64, 8), np.float32))
    other = tmp_path / "other.onnx_adapter"
    write_onnx_adapter(other, {A: np.ones((48, 8), np.float32)})  # another base's hidden size
    with pytest.raises(InputError, match="is not an adapter of 'base'"):
        load_adapter(other, inputs, "base")
    with pytest.raises(InputError, match="without LoRA inputs.*--keep-adapter"):
        load_adapter(file, lora_inputs(_graph(tmp_path / "plain.onnx", lora=False)), "plain")
    (tmp_path / "text.onnx_adapter").write_text("not an adapter")
    with pytest.raises(InputError, match="not an ONNX Runtime adapter file"):
        load_adapter(tmp_path / "text.onnx_adapter", inputs, "base")
