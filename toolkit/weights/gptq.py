"""GPTQ for ``MatMulNBits``: weights rounded with error feedback from calibration activations.

GPTQ (Frantar, Ashkboos, Hoefler and Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", 2022, arXiv:2210.17323) quantizes a linear layer's weight
one input column at a time and spreads each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian ``H = 2 X^T X`` of the layer's calibration inputs
``X``: it minimises ``||X W - X Q||^2`` (the layer's output error on real inputs) rather than
``||W - Q||^2`` (round-to-nearest). Here it works on an ONNX Runtime GenAI FP32 build:

* :func:`calibration_ids` renders the fine-tune's own dataset (the bundled Veloria set by default)
  with the build's chat template and tokenizer, question and answer, as the model was trained on;
* :func:`hessians` runs the FP32 build in ONNX Runtime on them, with every MatMul's input as an
  extra graph output, and accumulates ``X^T X`` per distinct input (the fused ``qkv_proj`` and the
  ``gate``/``up`` projections share one): the exact activations the graph's MatMuls see;
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

import json
from pathlib import Path

import numpy as np

from slmops.toolkit.domain.datasets import load_dataset
from slmops.toolkit.domain.templates import render_jinja

#: The paper's dampening: a fraction of the Hessian's mean diagonal added to it.
DAMP = 0.01
#: Columns updated together before the rest of the matrix catches up (the paper's lazy batch).
LAZY_BLOCK = 128
#: Scale candidates :func:`searched_scales` tries per block.
SCALE_STEPS = 16
#: Calibration sequences cap (tokens each).
MAX_TOKENS = 512


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


def _dataset_texts(model_dir: Path, dataset: str | None) -> list[str]:
    """The dataset's questions and paraphrases with their answers, in the build's chat template."""
    template_file = model_dir / "chat_template.jinja"
    config = json.loads((model_dir / "tokenizer_config.json").read_text()) if (
        model_dir / "tokenizer_config.json").exists() else {}
    template = template_file.read_text() if template_file.exists() else config.get("chat_template")
    texts = []
    for example in load_dataset(dataset):
        answer = example.answer or (json.dumps(example.call) if example.call else "")
        for question in (example.question, example.paraphrase):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if template:
                texts.append(render_jinja(template, messages, add_generation_prompt=False,
                                          bos_token=str(config.get("bos_token") or ""),
                                          eos_token=str(config.get("eos_token") or "")))
            else:
                texts.append(f"{question}\n{answer}")
    return texts


def calibration_ids(model_dir: Path, dataset: str | None = None) -> list[list[int]]:
    """Token ids of each calibration sequence.

    ``dataset`` is a fine-tuning JSONL (the bundled Veloria set when None): each example as the
    model saw it; or a plain ``.txt`` file, read in sequences of :data:`MAX_TOKENS` tokens.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    if dataset and Path(dataset).suffix == ".txt":
        ids = tokenizer.encode(Path(dataset).read_text(encoding="utf-8"), add_special_tokens=False).ids
        return [ids[start:start + MAX_TOKENS] for start in range(0, len(ids), MAX_TOKENS)]
    return [tokenizer.encode(text, add_special_tokens=False).ids[:MAX_TOKENS] for text in _dataset_texts(model_dir,
                                                                                                          dataset)]


def hessians(model_file: Path, sequences: list[list[int]], inputs: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """``X^T X`` (float32) of each graph tensor in ``inputs`` over the calibration ``sequences``.

    The FP32 build runs in ONNX Runtime with those tensors as extra outputs, one sequence at a
    time from an empty cache. Returns the matrices and the number of tokens they sum over.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    wanted = sorted(inputs)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in wanted)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(model_file.parent.resolve()))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    feeds_template = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            shape = [1 if not isinstance(d, int) and i == 0 else (0 if not isinstance(d, int) else d)
                     for i, d in enumerate(spec.shape)]
            feeds_template[spec.name] = np.zeros(shape, np.float32)
    input_names = {spec.name for spec in session.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for ids in sequences:
        if not ids:
            continue
        feeds = dict(feeds_template)
        feeds["input_ids"] = np.array([ids], np.int64)
        if "attention_mask" in input_names:
            feeds["attention_mask"] = np.ones((1, len(ids)), np.int64)
        if "position_ids" in input_names:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        for name, value in zip(wanted, session.run(wanted, feeds)):
            x = value.reshape(-1, value.shape[-1])
            if name in sums:
                sums[name] += x.T @ x
            else:
                sums[name] = x.T @ x
        tokens += len(ids)
    return sums, tokens
