"""GPTQ for ``MatMulNBits``: weights rounded with error feedback from calibration activations.

GPTQ (Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", 2022, arXiv:2210.17323) quantizes a linear layer's weight
one input column at a time and spreads each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's calibration inputs
``X``: it minimises ``||X W - X Q||^2`` (the layer's output error on real inputs) rather than
``||W - Q||^2`` (round-to-nearest). Here it works on an ONNX Runtime GenAI FP32 build:

* :func:`slmops.toolkit.weights.calibration.calibration_ids` renders the fine-tune's own dataset (the
  bundled Veloria set by default) with the build's chat template and tokenizer, as the model was trained on;
* :func:`slmops.toolkit.weights.calibration.hessians` runs the FP32 build in ONNX Runtime on them and
  accumulates ``X^T X`` per distinct MatMul input: the exact activations the graph's MatMuls see;
* :func:`gptq` quantizes one ``[K, N]`` weight to the symmetric blockwise grid ONNX Runtime's own
  ``MatMulNBits`` quantizer uses (one float scale per block along ``K``, searched for the least
  rounding error instead of set by the largest value, no zero points), so a GPTQ
  build runs on the very same kernels as the round-to-nearest one, at the same size and speed.

The Hessians come from the FP32 model's activations for every layer at once (not layer by layer
through the already quantized ones, as the paper does): one calibration pass, no PyTorch.

On the demo's fine-tune (``benchmarks/int4_gptq.py``; its figures are on the docs site's benchmarks
page, ``docs/benchmarks.md``), calibration on the narrow Veloria set does not beat round-to-nearest on
generic text, while calibration on generic prose does.
"""

from __future__ import annotations

import numpy as np

#: The paper's dampening: a fraction of the Hessian's mean diagonal added to it.
DAMP = 0.01
#: Columns updated together before the rest of the matrix catches up (the paper's lazy batch).
LAZY_BLOCK = 128
#: Scale candidates :func:`searched_scales` tries per block.
SCALE_STEPS = 16


def symmetric_scales(block: np.ndarray, bits: int) -> np.ndarray:
    """One scale per row of ``block`` ``[rows, block_size]``: ONNX Runtime's symmetric blockwise rule.

    The value of largest magnitude maps to ``-2**(bits-1)`` (the grid's full 16 or 256 levels),
    as ``MatMulNBitsQuantizer(is_symmetric=True)`` does.
    """
    index = np.abs(block).argmax(axis=1)
    extreme = block[np.arange(block.shape[0]), index]
    scales = extreme / -(2 ** (bits - 1))
    scales[scales == 0] = 1.0
    return scales


def searched_scales(block: np.ndarray, bits: int, steps: int = SCALE_STEPS) -> np.ndarray:
    """Per row of ``block`` ``[rows, block_size]``, the scale with the least squared rounding error.

    The candidates are :func:`symmetric_scales` times ``steps`` factors from 1.0 down to 0.70: a
    smaller scale clips the extreme value and rounds the others finer (the search of llama.cpp's
    ``make_qx_quants``, here on ONNX Runtime's grid). Factor 1.0 is always a candidate, so the
    error is never above the plain rule's. On the demo's rotated ``v-down-all`` plan at block 64
    it took GPTQ's KL against FP32 from 0.094 to 0.088; weights still on a GGUF's grid keep their
    largest value's scale.
    """
    base = symmetric_scales(block, bits)
    best, best_err = base, np.full(base.shape, np.inf)
    for factor in np.linspace(1.0, 0.70, steps):
        scales = base * factor
        err = ((_round(block, scales[:, None], bits) * scales[:, None] - block) ** 2).sum(axis=1)
        better = err < best_err
        best, best_err = np.where(better, scales, best), np.where(better, err, best_err)
    return best


def _round(values: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    half = 2 ** (bits - 1)
    return np.clip(np.rint(values / scales), -half, half - 1)


def _padded(weight: np.ndarray, block_size: int) -> np.ndarray:
    """``weight`` ``[K, N]`` with zero rows up to a multiple of ``block_size`` (ONNX Runtime pads its last block so)."""
    extra = -weight.shape[0] % block_size
    return np.pad(weight, ((0, extra), (0, 0))) if extra else weight


def rtn(weight: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest on the same grid as :func:`gptq` (the reference it is measured against).

    Returns:
        ``(codes, scales)``: int8 ``[N, Kp]`` in ``[-2**(bits-1), 2**(bits-1))`` and float32 ``[N, Kp // block_size]``,
        where ``Kp`` is ``K`` rounded up to a multiple of ``block_size`` (the padding's codes are 0).
    """
    wt = _padded(weight, block_size).T.astype(np.float64)
    n, k = wt.shape
    blocks = wt.reshape(n, k // block_size, block_size)
    scales = symmetric_scales(blocks.reshape(-1, block_size), bits).reshape(n, -1)
    codes = _round(blocks, scales[..., None], bits).reshape(n, k)
    return codes.astype(np.int8), scales.astype(np.float32)


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int, *,
         damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of a MatMul weight ``[K, N]`` given ``hessian = X^T X`` ``[K, K]`` of its inputs.

    Blocks of ``block_size`` along ``K`` get their scale when the first of their columns comes
    up (from the weights as already updated by the error feedback), as the paper's grouped variant,
    chosen by :func:`searched_scales`.

    Returns:
        ``(codes, scales)`` as :func:`rtn` (a ``K`` that is not a multiple of ``block_size`` is padded
        with zero weights whose inputs the Hessian marks dead).
    """
    w = _padded(weight, block_size).T.astype(np.float64)  # [N, Kp]: rows are outputs, GPTQ walks the input columns
    n, k = w.shape
    h = np.zeros((k, k))
    h[:weight.shape[0], :weight.shape[0]] = hessian
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    # Upper Cholesky factor of H^-1: row i holds the feedback weights of column i onto the later ones.
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.zeros((n, k), np.int8)
    scales = np.zeros((n, k // block_size), np.float64)
    lazy = max(block_size, LAZY_BLOCK // block_size * block_size)
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        w1 = w[:, start:stop].copy()
        err = np.zeros_like(w1)
        h1 = hinv[start:stop, start:stop]
        for i in range(stop - start):
            column = start + i
            if column % block_size == 0:
                scales[:, column // block_size] = searched_scales(w1[:, i:i + block_size], bits)
            scale = scales[:, column // block_size]
            q = _round(w1[:, i], scale, bits)
            codes[:, column] = q
            e = (w1[:, i] - q * scale) / h1[i, i]
            w1[:, i:] -= np.outer(e, h1[i, i:])
            err[:, i] = e
        w[:, stop:] -= err @ hinv[start:stop, stop:]
    return codes, scales.astype(np.float32)


def pack(codes: np.ndarray, bits: int, block_size: int, rows: int | None = None) -> np.ndarray:
    """``MatMulNBits``' ``B``: ``[N, Kp // block_size, block_size * bits // 8]`` uint8, offset by the default zero point.

    Two 4-bit values a byte, the lower ``K`` index in the low nibble. Past the weight's ``rows``
    inputs the bytes are 0, as ONNX Runtime's quantizer writes its padding (the kernel never reads them).
    """
    n, k = codes.shape
    values = (codes.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
    values[:, k if rows is None else rows:] = 0
    if bits == 4:
        values = values[:, 0::2] | (values[:, 1::2] << 4)
    return values.reshape(n, k // block_size, block_size * bits // 8)


def dequantize(codes: np.ndarray, scales: np.ndarray, block_size: int, rows: int | None = None) -> np.ndarray:
    """The ``[K, N]`` weight ``(codes, scales)`` stand for (its first ``rows`` rows: the padding dropped)."""
    n, k = codes.shape
    return (codes.reshape(n, -1, block_size) * scales[..., None]).reshape(n, k).T[:rows].astype(np.float32)


def output_error(weight: np.ndarray, quantized: np.ndarray, hessian: np.ndarray) -> float:
    """``trace((W - Q)^T H (W - Q))``: the squared output error over the calibration inputs."""
    delta = (weight - quantized).astype(np.float64)
    return float(np.sum(delta * (hessian.astype(np.float64) @ delta)))


