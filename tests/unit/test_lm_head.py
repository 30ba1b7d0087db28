"""The LM head on the last position only (slmops.toolkit.domain.lm_head), on a tiny graph with its weights outside it."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from slmops.toolkit.domain.lm_head import (
    ALL_POSITIONS,
    all_positions_graph,
    is_pruned,
    prune_lm_head,
    serve_last_position,
)

HIDDEN, VOCAB = 8, 11


def _decoder(folder, weights: np.ndarray):
    """hidden -> a norm-like Mul -> the LM head's MatMul -> logits, weights in model.onnx.data as the builder writes them."""
    head = numpy_helper.from_array(weights, "lm_head.weight")
    scale = numpy_helper.from_array(np.full(HIDDEN, 0.5, np.float32), "norm.weight")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["hidden", "norm.weight"], ["normed"], name="/model/norm/Mul"),
         helper.make_node("MatMul", ["normed", "lm_head.weight"], ["logits"], name="/lm_head/MatMul")],
        "decoder",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch_size", "sequence_length", HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])],
        [head, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def _run(model_file, hidden: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"hidden": hidden})[0]


def test_the_pruned_graph_gives_the_last_positions_logits_and_reads_the_same_weights(tmp_path):
    rng = np.random.default_rng(0)
    full = _decoder(tmp_path, rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32))
    served = tmp_path / "served.onnx"
    assert not is_pruned(full)
    assert prune_lm_head(full, served) is True
    assert is_pruned(served) and served.stat().st_size < 2000  # the graph only: weights stay in model.onnx.data
    hidden = rng.standard_normal((2, 5, HIDDEN)).astype(np.float32)
    every, last = _run(full, hidden), _run(served, hidden)
    assert every.shape == (2, 5, VOCAB) and last.shape == (2, 1, VOCAB)
    np.testing.assert_array_equal(last[:, 0], every[:, -1])
    # One prompt token: the same as the full graph's only row.
    np.testing.assert_array_equal(_run(served, hidden[:, :1]), _run(full, hidden[:, :1]))


def test_a_pruned_graph_or_one_without_a_matmul_head_is_left_alone(tmp_path):
    full = _decoder(tmp_path, np.ones((HIDDEN, VOCAB), np.float32))
    served = tmp_path / "served.onnx"
    prune_lm_head(full, served)
    again = tmp_path / "again.onnx"
    assert prune_lm_head(served, again) is False and not again.exists()
    assert prune_lm_head(full, tmp_path / "x.onnx", logits="no_such_output") is False


def test_the_declared_output_shape_is_what_onnx_runtime_genai_reads(tmp_path):
    # ONNX Runtime GenAI (0.14) takes a graph as "trimmed prefill logits" when dim 1 of logits is a static 1.
    served = tmp_path / "served.onnx"
    prune_lm_head(_decoder(tmp_path, np.ones((HIDDEN, VOCAB), np.float32)), served)
    dims = next(o for o in onnx.load(str(served), load_external_data=False).graph.output).type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch_size", 1, VOCAB]


def test_a_served_copy_is_pruned_without_touching_the_linked_source(tmp_path):
    source, served = tmp_path / "source", tmp_path / "served"
    source.mkdir()
    served.mkdir()
    rng = np.random.default_rng(1)
    full = _decoder(source, rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32))
    for item in source.iterdir():  # as registration stages a folder: hard links
        os.link(item, served / item.name)
    before = full.read_bytes()
    assert all_positions_graph(served) is None
    assert serve_last_position(served) is True
    assert full.read_bytes() == before and not is_pruned(full)  # the source's graph is the same file as before
    assert is_pruned(served / "model.onnx") and all_positions_graph(served) == ALL_POSITIONS
    hidden = rng.standard_normal((1, 4, HIDDEN)).astype(np.float32)
    np.testing.assert_array_equal(_run(served / ALL_POSITIONS, hidden), _run(full, hidden))
    assert serve_last_position(served) is False  # once is enough


def test_a_head_behind_another_branch_is_not_pruned(tmp_path):
    # A LoRA branch added to the head's output still reads every position: pruning only the MatMul would be wrong.
    full = _decoder(tmp_path, np.ones((HIDDEN, VOCAB), np.float32))
    model = onnx.load(str(full), load_external_data=False)
    head = model.graph.node[-1]
    head.output[0] = "base_logits"
    model.graph.node.append(helper.make_node("Add", ["base_logits", "base_logits"], ["logits"], name="/lora/Add"))
    onnx.save(model, str(tmp_path / "lora.onnx"))
    assert prune_lm_head(tmp_path / "lora.onnx", tmp_path / "out.onnx") is False
