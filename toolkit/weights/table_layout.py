"""The symmetric blockwise table layout ``MatMulNBits`` and ``GatherBlockQuantized`` share (the LM head and embedding table)."""

from __future__ import annotations

import numpy as np

from slmops.toolkit.weights.weight_store import CHUNK_BYTES


def quantize_table(weights: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blockwise quantization of a ``[rows, cols]`` table along ``cols``.

    The layout is the one ``MatMulNBits`` (weight ``[N, K]``) and ``GatherBlockQuantized``
    (``quantize_axis=1``) share: unsigned values offset by ``2**(bits-1)`` (their default
    zero point), two 4-bit values per byte low nibble first, one scale per block.

    Returns:
        ``(data, scales)``: uint8 ``[rows, cols * bits // 8]`` and float32 ``[rows, cols // block_size]``.

    Example:
        >>> data, scales = quantize_table(np.eye(32, dtype=np.float32), 8, 32)
        >>> data.shape, scales.shape
        ((32, 32), (32, 1))
    """
    rows, cols = weights.shape
    blocks = weights.reshape(rows, cols // block_size, block_size).astype(np.float32)
    qmax = 2 ** (bits - 1) - 1
    scales = np.abs(blocks).max(axis=-1) / qmax
    scales[scales == 0] = 1.0
    values = np.clip(np.rint(blocks / scales[..., None]), -qmax - 1, qmax) + 2 ** (bits - 1)
    values = values.astype(np.uint8).reshape(rows, cols)
    if bits == 4:
        values = values[:, 0::2] | (values[:, 1::2] << 4)
    return values, scales.astype(np.float32)


def quantize_rows(table: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_table` a slice of rows at a time (rows are independent), to bound its temporaries."""
    step = max(1, CHUNK_BYTES // max(1, table.shape[1] * 4))
    parts = [quantize_table(table[start:start + step], bits, block_size) for start in range(0, table.shape[0], step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
