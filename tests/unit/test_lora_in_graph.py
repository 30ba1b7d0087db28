"""A LoRA kept in the graph (issue 44): the builder's LoRA matrices stored in FP16, each read through a Cast to float.

A hand-made graph in the builder's names (``...q_proj.MatMul`` beside ``...q_proj.lora_A.MatMul`` and
``lora_B``), run in ONNX Runtime before and after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.weights.lora_apart import is_lora_weight, lora_bytes, lora_in_fp16

HIDDEN, RANK = 64, 4
PREFIX = "model.layers.0.attn.q_proj"


def _builder_like_graph(folder: Path) -> Path:
    """``y = x W + (x A) B`` with W, A and B initializers named as the model builder names them (external data)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {f"{PREFIX}.MatMul.weight": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32),
               f"{PREFIX}.lora_A.MatMul.weight": rng.standard_normal((HIDDEN, RANK)).astype(np.float32),
               f"{PREFIX}.lora_B.MatMul.weight": rng.standard_normal((RANK, HIDDEN)).astype(np.float32) / 8}
    names = list(weights)
    nodes = [helper.make_node("MatMul", ["x", names[0]], ["base"], name="/q_proj/MatMul"),
             helper.make_node("MatMul", ["x", names[1]], ["xa"], name="/q_proj/lora_A/MatMul"),
             helper.make_node("MatMul", ["xa", names[2]], ["delta"], name="/q_proj/lora_B/MatMul"),
             helper.make_node("Add", ["base", "delta"], ["y"], name="/q_proj/Add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", HIDDEN])],
                              [numpy_helper.from_array(array, name) for name, array in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    return folder / "model.onnx"


def _run(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_lora_branch_is_stored_in_fp16_and_computes_what_it_did(tmp_path: Path) -> None:
    import onnx

    source = _builder_like_graph(tmp_path / "fp32")
    target = tmp_path / "side-branch" / "model.onnx"
    assert lora_in_fp16(source, target) == 2
    graph = onnx.load(str(target), load_external_data=False).graph
    stored = {init.name: init.data_type for init in graph.initializer}
    assert stored == {f"{PREFIX}.MatMul.weight": onnx.TensorProto.FLOAT,  # the base's weight is left to the quantizer
                      f"{PREFIX}.lora_A.MatMul.weight_fp16": onnx.TensorProto.FLOAT16,
                      f"{PREFIX}.lora_B.MatMul.weight_fp16": onnx.TensorProto.FLOAT16}
    # Each matrix reaches its MatMul through a Cast to float, placed before the nodes that read it.
    casts = [node for node in graph.node if node.op_type == "Cast"]
    assert [node.output[0] for node in casts] == [f"{PREFIX}.lora_A.MatMul.weight", f"{PREFIX}.lora_B.MatMul.weight"]
    assert list(graph.node)[:2] == casts
    assert lora_bytes(target) == 2 * (HIDDEN * RANK + RANK * HIDDEN) and lora_bytes(source) == 2 * lora_bytes(target)
    x = np.random.default_rng(1).standard_normal((3, HIDDEN)).astype(np.float32)
    before, after = _run(source, x), _run(target, x)
    delta = np.abs(before - (x @ onnx.numpy_helper.to_array(
        next(i for i in onnx.load(str(source)).graph.initializer if i.name == f"{PREFIX}.MatMul.weight")))).max()
    assert np.abs(after - before).max() < 1e-2 * delta  # FP16 rounding of the branch only: far below its size


def test_lora_matrices_are_told_from_the_base_weights_by_the_builder_names() -> None:
    assert is_lora_weight(f"{PREFIX}.lora_A.MatMul.weight") and is_lora_weight(f"{PREFIX}.lora_B.MatMul.weight_fp16")
    assert not is_lora_weight(f"{PREFIX}.MatMul.weight") and not is_lora_weight("lm_head.MatMul.weight")


def test_a_graph_without_lora_matrices_is_refused(tmp_path: Path) -> None:
    import onnx

    source = _builder_like_graph(tmp_path / "fp32")
    model = onnx.load(str(source))
    plain = [i for i in model.graph.initializer if not is_lora_weight(i.name)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(plain)
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="holds no LoRA matrices"):
        lora_in_fp16(tmp_path / "plain.onnx", tmp_path / "out" / "model.onnx")


def test_a_cached_recipe_build_is_not_reused_once_the_side_branchs_code_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipe comparison's ``mixed-lora`` build is rewritten by ``lora_branch``: its code is in the cache key."""
    from slmops.toolkit.orchestration import recipes
    from slmops.toolkit.weights import lora_branch

    seen: list = []
    monkeypatch.setattr(recipes.build_cache, "code_fingerprint", lambda *modules: seen.extend(modules) or "code")
    recipes.recipe_cache_keys(tmp_path, tmp_path, {})
    assert lora_branch in seen
