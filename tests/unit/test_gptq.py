"""GPTQ-calibrated INT4 (issue 25): ORT's grid and layout, lower output error than round-to-nearest, end to end."""

from __future__ import annotations

import numpy as np
import pytest

from slmops.toolkit.core.errors import InvalidOptionError
from slmops.toolkit.domain.options import Int4Algorithm, Int4Options
from slmops.toolkit.weights import gptq
from slmops.toolkit.weights.quantize import QuantPlan


def test_round_to_nearest_is_ort_default_symmetric_quantizer_bit_for_bit() -> None:
    from onnx import helper, numpy_helper

    from slmops.toolkit.weights.quantize import _quantize_slice

    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/m/MatMul")
    # 144 inputs: not a multiple of the block size, so the last block is padded (SmolLM2's 576 at block 128).
    for k in (128, 144):
        weight = np.random.default_rng(0).normal(size=(k, 48)).astype(np.float32)
        for bits in (4, 8):
            nodes, inits = _quantize_slice(node, weight, QuantPlan(bits=bits), [helper.make_opsetid("", 17)])
            ort = {init.name: numpy_helper.to_array(init) for init in inits}
            codes, scales = gptq.rtn(weight, bits, 32)
            assert np.array_equal(gptq.pack(codes, bits, 32, rows=k), ort[nodes[0].input[1]])
            assert np.array_equal(scales.reshape(-1), ort[nodes[0].input[2]].reshape(-1))


def test_gptq_of_a_weight_whose_inputs_are_not_a_multiple_of_the_block_size_has_ort_s_layout() -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(144, 48)).astype(np.float32)
    x = rng.normal(size=(512, 144)).astype(np.float32)
    codes, scales = gptq.gptq(weight, x.T @ x, 4, 32)
    rounded_codes, rounded_scales = gptq.rtn(weight, 4, 32)
    assert codes.shape == rounded_codes.shape == (48, 160) and scales.shape == rounded_scales.shape == (48, 5)
    assert not codes[:, 144:].any()  # the padding stays zero
    assert gptq.pack(codes, 4, 32, rows=144).shape == (48, 5, 16)
    restored = gptq.dequantize(codes, scales, 32, rows=144)
    assert gptq.output_error(weight, restored, x.T @ x) <= gptq.output_error(
        weight, gptq.dequantize(rounded_codes, rounded_scales, 32, rows=144), x.T @ x)


def test_searched_scales_never_round_worse_than_the_largest_value_rule_and_gaussian_blocks_better() -> None:
    block = np.random.default_rng(2).normal(size=(512, 32))

    def squared_error(scales: np.ndarray) -> np.ndarray:
        codes = np.clip(np.rint(block / scales[:, None]), -8, 7)
        return ((codes * scales[:, None] - block) ** 2).sum(axis=1)

    plain, searched = squared_error(gptq.symmetric_scales(block, 4)), squared_error(gptq.searched_scales(block, 4))
    assert np.all(searched <= plain + 1e-12)
    assert searched.mean() < 0.95 * plain.mean()  # 8% less here


def test_gptq_has_less_output_error_than_round_to_nearest_on_correlated_inputs() -> None:
    rng = np.random.default_rng(1)
    k, n = 128, 64
    weight = rng.normal(size=(k, n)).astype(np.float32)
    mixing = np.eye(k) + 0.5 * rng.normal(size=(k, k)) / np.sqrt(k)
    x = (rng.normal(size=(2048, k)) @ mixing * (1 + 4 * rng.random(k))).astype(np.float32)
    hessian = x.T @ x
    for bits in (4, 8):
        rounded = gptq.dequantize(*gptq.rtn(weight, bits, 32), 32)
        calibrated_codes, calibrated_scales = gptq.gptq(weight, hessian, bits, 32)
        assert calibrated_codes.min() >= -(2 ** (bits - 1)) and calibrated_codes.max() < 2 ** (bits - 1)
        calibrated = gptq.dequantize(calibrated_codes, calibrated_scales, 32)
        assert gptq.output_error(weight, calibrated, hessian) < 0.8 * gptq.output_error(weight, rounded, hessian)


def test_gptq_is_symmetric_only() -> None:
    with pytest.raises(InvalidOptionError, match="symmetric"):
        Int4Options(algorithm=Int4Algorithm.GPTQ, symmetric=False).validate()
