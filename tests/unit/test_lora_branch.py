"""The LoRA side branch of one graph once its base is quantized (issue 44): the base's rounding error made up for.

A hand-made graph in the model builder's names (``...q_proj.MatMul`` beside ``...q_proj.lora_A.MatMul`` and
``lora_B``), its LoRA stored in FP16 and its base quantized by the toolkit's own steps, then run in ONNX Runtime
against the merged weights ``W + A B`` in float.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.domain.options import BranchLayout
from slmops.toolkit.domain.quant_plan import LoraBranched, QuantPlan
from slmops.toolkit.weights.lora_apart import lora_bytes, lora_in_fp16
from slmops.toolkit.weights.lora_branch import (
    dequantize_nbits,
    error_factors,
    find_branches,
    quantize_rows,
    side_branch,
)
from slmops.toolkit.weights.quantize import quantize

HIDDEN, OUT, RANK = 128, 96, 4
PREFIX = "model.layers.0.attn.q_proj"


def _weights(prefix: str = PREFIX, seed: int = 0) -> dict[str, np.ndarray]:
    """A base weight with a few large input rows (as real models' outlier channels), and a LoRA."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((HIDDEN, OUT)).astype(np.float32)
    weight[:4] *= 8
    return {f"{prefix}.MatMul.weight": weight,
            f"{prefix}.lora_A.MatMul.weight": rng.standard_normal((HIDDEN, RANK)).astype(np.float32) / 4,
            f"{prefix}.lora_B.MatMul.weight": rng.standard_normal((RANK, OUT)).astype(np.float32) / 4}


def _builder_like_graph(folder: Path, modules: tuple[str, ...] = ("q_proj",)) -> Path:
    """``y = x W + (x A) B`` per module, all reading ``x``, named as the model builder names them (external data)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, outputs = [], [], []
    for seed, module in enumerate(modules):
        weights = _weights(PREFIX.replace("q_proj", module), seed)
        names = list(weights)
        y = "y" if module == "q_proj" else f"y_{module}"
        nodes += [helper.make_node("MatMul", ["x", names[0]], [f"base_{module}"], name=f"/{module}/MatMul"),
                  helper.make_node("MatMul", ["x", names[1]], [f"xa_{module}"], name=f"/{module}/lora_A/MatMul"),
                  helper.make_node("MatMul", [f"xa_{module}", names[2]], [f"delta_{module}"],
                                   name=f"/{module}/lora_B/MatMul"),
                  helper.make_node("Add", [f"base_{module}", f"delta_{module}"], [y], name=f"/{module}/lora/Add")]
        inits += [numpy_helper.from_array(array, name) for name, array in weights.items()]
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, ["n", OUT]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", HIDDEN])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=10)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    return folder / "model.onnx"


def _quantized(tmp_path: Path, bits: int = 4, modules: tuple[str, ...] = ("q_proj",),
               algorithm: str = "default") -> tuple[Path, Path]:
    """The graph's LoRA in FP16 (its base still FP32), and that graph with its base quantized (asymmetric blocks)."""
    fp16 = tmp_path / "fp16" / "model.onnx"
    lora_in_fp16(_builder_like_graph(tmp_path / "fp32", modules), fp16)
    target = tmp_path / f"int{bits}" / "model.onnx"
    quantize(fp16, target, QuantPlan(bits=bits, symmetric=False, lm_head_bits=32, algorithm=algorithm))
    return fp16, target


def _run(model: Path, x: np.ndarray, output: int = 0) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[output]


def _merged_error(model: Path, module: str = "q_proj", seed: int = 0) -> float:
    """How far the graph's output is from ``x (W + A B)`` in float, on inputs with the same large channels."""
    x = np.random.default_rng(1).standard_normal((64, HIDDEN)).astype(np.float32)
    w, a, b = _weights(PREFIX.replace("q_proj", module), seed).values()
    merged = x @ (w + a @ b)
    return float(np.linalg.norm(_run(model, x, seed) - merged) / np.linalg.norm(merged))


@pytest.mark.parametrize("bits", [4, 8])
def test_a_matmulnbits_weight_is_read_back_as_the_runtime_computes_with_it(tmp_path: Path, bits: int) -> None:
    import onnx

    _, target = _quantized(tmp_path, bits)
    model = onnx.load(str(target))
    [branch] = find_branches(model.graph)
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    weight = dequantize_nbits(branch.base, arrays.__getitem__)
    assert weight.shape == (HIDDEN, OUT)
    x = np.random.default_rng(2).standard_normal((8, HIDDEN)).astype(np.float32)
    a, b = (arrays[name].astype(np.float32) for name in (branch.a_weight, branch.b_weight))
    # ORT's MatMulNBits rounds its inputs to 8 bits (accuracy level 4): close, not exact.
    expected = _run(target, x)
    assert np.abs(x @ weight + (x @ a) @ b - expected).max() < 2e-2 * np.abs(expected).max()
    assert 0 < np.abs(weight - _weights()[f"{PREFIX}.MatMul.weight"]).max() < (0.5 if bits == 4 else 0.05) * 8


def test_the_error_factors_are_the_best_low_rank_stand_in() -> None:
    error = np.random.default_rng(3).standard_normal((HIDDEN, OUT)).astype(np.float32)
    u, v = error_factors(error, 8)
    assert u.shape == (HIDDEN, 8) and v.shape == (8, OUT)
    values = np.linalg.svd(error, compute_uv=False)
    # Eckart-Young: the residual's norm is that of the dropped singular values.
    assert np.linalg.norm(error - u @ v) == pytest.approx(np.sqrt(np.sum(values[8:] ** 2)), rel=1e-4)


def test_the_branch_carrying_the_bases_rounding_error_brings_the_int4_graph_closer_to_the_merged_weights(
        tmp_path: Path) -> None:
    import onnx

    fp16, quantized = _quantized(tmp_path)
    before = _merged_error(quantized)  # the LoRA alone beside the 4-bit base: what the build computed before
    errors = {}
    for rank in (0, 8, 32):
        target = tmp_path / f"r{rank}" / "model.onnx"
        assert side_branch(quantized, fp16, target, rank) == LoraBranched(branches=1, grown=int(rank > 0),
                                                                         error_rank=rank)
        errors[rank] = _merged_error(target)
        graph = onnx.load(str(target), load_external_data=False).graph
        shapes = {init.name: list(init.dims) for init in graph.initializer if ".lora_" in init.name}
        assert shapes == {f"{PREFIX}.lora_A.MatMul.weight_fp16": [HIDDEN, RANK + rank],
                          f"{PREFIX}.lora_B.MatMul.weight_fp16": [RANK + rank, OUT]}
        assert lora_bytes(target) == 2 * (RANK + rank) * (HIDDEN + OUT)  # counted in bits per weight
    assert errors[0] == pytest.approx(before, rel=1e-3)  # rank 0: the graph as it was
    assert errors[8] < 0.85 * before and errors[32] < 0.7 * errors[8]


def test_an_8_bit_branch_computes_what_the_fp16_branch_does_in_matmulnbits(tmp_path: Path) -> None:
    import onnx

    fp16, quantized = _quantized(tmp_path)
    half, eight = tmp_path / "b16" / "model.onnx", tmp_path / "b8" / "model.onnx"
    side_branch(quantized, fp16, half, 8)
    side_branch(quantized, fp16, eight, 8, bits=8)
    graph = onnx.load(str(eight), load_external_data=False).graph
    assert [node.op_type for node in graph.node] == ["MatMulNBits"] * 3 + ["Add"]
    assert not [node for node in graph.node if node.op_type == "Cast"]
    assert lora_bytes(eight) < 0.7 * lora_bytes(half)
    assert abs(_merged_error(eight) - _merged_error(half)) < 0.1 * _merged_error(half)
    with pytest.raises(ValueError, match="branch bits 4"):
        side_branch(quantized, fp16, tmp_path / "b4" / "model.onnx", 8, bits=4)


def test_rows_quantized_as_matmulnbits_blocks_read_back_within_half_a_step() -> None:
    rows = np.random.default_rng(4).standard_normal((20, OUT)).astype(np.float32)
    for bits in (4, 8):
        codes, scales = quantize_rows(rows, bits, 16)
        assert codes.shape == (OUT, 2, 16 * bits // 8) and scales.shape == (OUT, 2)
        unpacked = np.stack([codes & 15, codes >> 4], axis=-1).reshape(OUT, 2, 16) if bits == 4 else codes
        back = ((unpacked.astype(np.float32) - 2 ** (bits - 1)) * scales[..., None]).reshape(OUT, 32).T
        assert np.all(back[20:] == 0)  # the padding rows
        assert np.all(np.abs(back[:20] - rows) <= np.repeat(scales.T, 16, axis=0)[:20] / 2 + 1e-6)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_folded_branch_is_one_base_matmulnbits_over_x_and_xa_and_computes_what_the_added_one_does(
        tmp_path: Path, bits: int) -> None:
    """B's rows appended along K to the base's 4-bit weight (their own blocks): the B MatMul and the Add are gone."""
    import onnx

    fp16, quantized = _quantized(tmp_path)
    added, folded = tmp_path / "add" / "model.onnx", tmp_path / "folded" / "model.onnx"
    side_branch(quantized, fp16, added, 8, bits=bits)
    made = side_branch(quantized, fp16, folded, 8, bits=bits, layout=BranchLayout.FOLDED)
    assert made == LoraBranched(branches=1, grown=1, error_rank=8, branch_bits=bits, layout="folded", folded=1)
    graph = onnx.load(str(folded), load_external_data=False).graph
    a_node = ["MatMulNBits"] if bits == 8 else ["Cast", "MatMul"]
    assert [node.op_type for node in graph.node] == [*a_node, "Concat", "MatMulNBits"]
    base = graph.node[-1]
    assert next(a.i for a in base.attribute if a.name == "K") == HIDDEN + 32  # rank 4 + 8, padded to one block
    arrays = {init.name: onnx.numpy_helper.to_array(init) for init in onnx.load(str(folded)).graph.initializer}
    before = onnx.load(str(quantized))
    [branch] = find_branches(before.graph)
    original = {init.name: onnx.numpy_helper.to_array(init) for init in before.graph.initializer}
    weight = dequantize_nbits(base, arrays.__getitem__)
    assert np.array_equal(weight[:HIDDEN], dequantize_nbits(branch.base, original.__getitem__))  # W4 untouched
    assert abs(_merged_error(folded) - _merged_error(added)) < 0.05 * _merged_error(added)


@pytest.mark.parametrize("algorithm", ["default", "hqq"])  # zero points packed in 4 bits; HQQ's in float
def test_folded_branches_that_read_one_input_share_one_a_and_one_concat(tmp_path: Path, algorithm: str) -> None:
    import onnx

    modules = ("q_proj", "k_proj")
    fp16, quantized = _quantized(tmp_path, modules=modules, algorithm=algorithm)
    added, folded = tmp_path / "add" / "model.onnx", tmp_path / "folded" / "model.onnx"
    side_branch(quantized, fp16, added, 8, bits=8)
    assert side_branch(quantized, fp16, folded, 8, bits=8, layout=BranchLayout.FOLDED).folded == 2
    graph = onnx.load(str(folded), load_external_data=False).graph
    assert [node.op_type for node in graph.node] == ["MatMulNBits", "Concat", "MatMulNBits", "MatMulNBits"]
    a_node = graph.node[0]
    assert next(a.i for a in a_node.attribute if a.name == "N") == 32  # 2 x (4 + 8) columns, one block
    for seed, module in enumerate(modules):
        assert abs(_merged_error(folded, module, seed) - _merged_error(added, module, seed)) < 0.05 * _merged_error(
            added, module, seed)


def test_over_an_8_bit_base_folded_merge8_merges_the_lora_into_the_base_as_a_merged_build_rounds_it(
        tmp_path: Path) -> None:
    import onnx

    fp16, quantized = _quantized(tmp_path, bits=8)
    added, merged = tmp_path / "add" / "model.onnx", tmp_path / "merge8" / "model.onnx"
    side_branch(quantized, fp16, added, 8, bits=8)
    made = side_branch(quantized, fp16, merged, 8, bits=8, layout=BranchLayout.FOLDED_MERGE8)
    assert (made.merged, made.folded, made.grown) == (1, 0, 0)
    graph = onnx.load(str(merged), load_external_data=False).graph
    assert [node.op_type for node in graph.node] == ["MatMulNBits"]
    assert not [init.name for init in graph.initializer if ".lora_" in init.name]
    assert _merged_error(merged) < 0.01 and _merged_error(added) < 0.01  # 8 bits hold the LoRA either way


def test_the_bytes_of_a_folded_branch_count_its_rows_in_the_base(tmp_path: Path) -> None:
    """Bits per weight without the adapter leave out ``B``'s rows folded into the base, as they leave out an added B."""
    fp16, quantized = _quantized(tmp_path)
    added, folded = tmp_path / "add" / "model.onnx", tmp_path / "folded" / "model.onnx"
    side_branch(quantized, fp16, added, 28, bits=8)  # rank 4 + 28: one whole block, no padding either way
    side_branch(quantized, fp16, folded, 28, bits=8, layout=BranchLayout.FOLDED)

    def total(model: Path) -> int:
        return sum(f.stat().st_size for f in model.parent.glob("model.onnx*"))

    # The base's own bytes are the same in both; B's 32 rows in 4 bits take about half their 8-bit bytes.
    base_added, base_folded = total(added) - lora_bytes(added), total(folded) - lora_bytes(folded)
    assert abs(base_folded - base_added) < 0.05 * base_added  # the graphs' own bytes differ a little
    assert 0 < lora_bytes(folded) < lora_bytes(added)
