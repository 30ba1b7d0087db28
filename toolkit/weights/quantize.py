"""Weight-only quantization of an FP32 ONNX Runtime GenAI model (run as a child process).

The 0.14 model builder quantizes to int4 only, with a fixed choice of algorithms and with
the embedding table left in FP32. For everything else (INT8, HQQ, the precision of the
embedding table and of the LM head) the builder writes FP32 and this module quantizes it
with ONNX Runtime's ``MatMulNBitsQuantizer``:

* every MatMul with a constant weight becomes ``MatMulNBits`` (4 or 8 bits, blockwise),
  with the chosen algorithm (``default`` min-max, ``rtn``, ``k_quant`` or ``hqq``);
* the LM head gets its own precision, symmetric blockwise, so that
* the embedding table can be a ``GatherBlockQuantized`` over the LM head's quantized
  table when the model ties them (one table on disk, as the builder's
  ``shared_embeddings``), or its own quantized table when it does not.

Weights only: activations stay FP32 (``accuracy_level`` picks the MatMul compute type).

It works tensor by tensor: the graph is read without its weights, each MatMul's weight is
read from the external data file, quantized alone (ORT's quantizer on a one-node model)
and appended to the output's data file, so peak memory is about one FP32 tensor and its
quantized copy, whatever the model's size (the builder's own INT4 holds the whole FP32
model and its quantized copy at once). With ``lm_head_with_body`` the LM head goes
through ORT's quantizer like the body, which is exactly the builder's own INT4.
It runs as a worker task (``quantize``, see :mod:`slmops.toolkit.core.workers`), so its peak memory is
measured on its own and a crash cannot take the toolkit with it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from slmops.toolkit.core import workers
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.weights import gptq
from slmops.toolkit.weights.onnx_weights import EXTERNAL, LM_HEAD, ROTATION_PREFIX, read_initializer
from slmops.toolkit.weights.rotate import UnsupportedGraph, rotate


@dataclass(frozen=True)
class QuantPlan:
    """What to quantize and how.

    Attributes:
        bits: Bits of the transformer body's MatMul weights (4 or 8).
        algorithm: ``default`` (min-max), ``rtn``, ``k_quant``, ``hqq``, or ``gptq`` (calibrated on
            ``calibration``, see :mod:`slmops.toolkit.weights.gptq`; symmetric, the default's grid and kernels).
        block_size: Weights per quantization block.
        symmetric: Symmetric quantization (no zero points); HQQ is always asymmetric.
        accuracy_level: MatMulNBits compute type (4 int8, 3 bf16, 2 fp16, 1 fp32, 0 unset).
        lm_head_bits: 4, 8, or 32 to keep the LM head in FP32.
        embedding_bits: 4, 8, or 32 to keep the embedding table in FP32.
        lm_head_with_body: Quantize the LM head with the body's algorithm and settings (the
            builder's own INT4) instead of our symmetric table layout.
        mix: A named rule in :data:`MIXES` choosing MatMuls (or the value part of a fused
            ``qkv_proj``) that get ``mix_bits`` instead of ``bits``; empty for a uniform body.
        mix_bits: Bits of the MatMuls the mix chooses (8).
        calibration: GPTQ's calibration dataset (a fine-tuning JSONL); empty for the bundled Veloria set.
        rotate: Rotate the residual stream (and values per head) before quantizing, which spreads
            outlier channels over all of them (see :mod:`slmops.toolkit.weights.rotate`).
    """

    bits: int = 4
    algorithm: str = "default"
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    lm_head_bits: int = 4
    embedding_bits: int = 32
    lm_head_with_body: bool = False
    mix: str = ""
    mix_bits: int = 8
    calibration: str = ""
    rotate: bool = False


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third one between.

    Example:
        >>> [i for i in range(30) if use_more_bits(i, 30)]
        [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    """
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


#: Mixed-precision rules: name -> (which projections, which layers) that get ``mix_bits``.
#: ``v`` is the value projection (split out of a fused ``qkv_proj``), ``down`` the MLP's.
#: Measured on the demo's fine-tune (KL against FP32, see docs/benchmarks.md, "INT4 recipes"): the value
#: projections and a few MLP down projections (layer 11's alone carries a fifth of the
#: 4-bit body's KL) are where 4 bits lose the fine-tune.
MIXES: dict[str, dict[str, str]] = {
    "q4_k_m": {"v": "more-bits", "down": "more-bits"},  # llama.cpp's Q4_K_M choice of tensors
    "v-all-down-more-bits": {"v": "all", "down": "more-bits"},
    "v-down-all": {"v": "all", "down": "all"},  # at block 64: 6.35 bits/weight, KL 0.176 (benchmarks/int4_gptq.py)
}


_LAYER = re.compile(r"/model/layers\.(\d+)/")


def _projection(node_name: str) -> str:
    for kind, names in (("v", ("/v_proj/", "/qkv_proj/")), ("down", ("/down_proj/",))):
        if any(name in node_name for name in names):
            return kind
    return ""


def mixed_bits(node_name: str, plan: QuantPlan, layers: int) -> int:
    """Bits of MatMul ``node_name`` under ``plan``'s mix (for a fused ``qkv_proj``: of its value part).

    Example:
        >>> mixed_bits("/model/layers.11/mlp/down_proj/MatMul", QuantPlan(mix="q4_k_m"), 30)
        8
    """
    rule = MIXES.get(plan.mix, {}).get(_projection(node_name))
    found = _LAYER.search(node_name)
    if rule is None or found is None:
        return plan.bits
    chosen = rule == "all" or (rule == "more-bits" and use_more_bits(int(found.group(1)), layers))
    return plan.mix_bits if chosen else plan.bits


def _value_columns(model_dir: Path, weight_columns: int, hidden: int) -> int:
    """How many of a fused ``qkv_proj``'s output columns are the value projection (from ``genai_config.json``)."""
    decoder = _decoder(model_dir)
    try:
        return int(decoder["head_size"]) * int(decoder["num_key_value_heads"])
    except (KeyError, ValueError):
        return (weight_columns - hidden) // 2  # q is as wide as the hidden state, k as v


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


def _quantize_rows(table: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_table` a slice of rows at a time (rows are independent), to bound its temporaries."""
    step = max(1, CHUNK_BYTES // max(1, table.shape[1] * 4))
    parts = [quantize_table(table[start:start + step], bits, block_size) for start in range(0, table.shape[0], step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _algo_config(plan: QuantPlan, bits: int):
    from onnxruntime.quantization import matmul_nbits_quantizer as q

    if plan.algorithm == "hqq":
        return q.HQQWeightOnlyQuantConfig(block_size=plan.block_size, bits=bits, op_types_to_quantize=("MatMul",))
    if plan.algorithm == "rtn":
        return q.RTNWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
    if plan.algorithm == "k_quant":
        return q.KQuantWeightOnlyQuantConfig(op_types_to_quantize=("MatMul",))
    return q.DefaultWeightOnlyQuantConfig(block_size=plan.block_size, is_symmetric=plan.symmetric,
                                          accuracy_level=plan.accuracy_level, bits=bits,
                                          op_types_to_quantize=("MatMul",))


class _Weights:
    """Initializers read one at a time from a model's external data, and new ones appended to the output's.

    Reads go through ``np.fromfile`` (a private copy freed after use), not a memory map,
    so pages of tensors already done do not pile up in the resident set.
    """

    def __init__(self, source_dir: Path, target_data: Path) -> None:
        self.source_dir = source_dir
        self.target_data = target_data
        self.handle = target_data.open("wb")
        self.stored: set[str] = set()

    def read(self, tensor) -> np.ndarray:
        """The array of initializer ``tensor`` (inline or in an external file)."""
        return read_initializer(tensor, self.source_dir)

    def store(self, tensor) -> None:
        """Move ``tensor``'s bytes to the output's data file; ``tensor`` then points there."""
        data = self.read(tensor)
        for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                      "string_data"):
            tensor.ClearField(field)
        self._append(tensor, data)

    def write(self, name: str, array: np.ndarray, *, transposed: bool = False):
        """A new initializer ``name`` holding ``array`` (or its transpose), written straight to the data file.

        The transpose is written in slices, so no whole transposed copy is ever made.
        """
        from onnx import TensorProto, helper

        shape = array.shape[::-1] if transposed else array.shape
        tensor = TensorProto(name=name, dims=list(shape), data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        self._append(tensor, array, transposed=transposed)
        return tensor

    def _append(self, tensor, array: np.ndarray, *, transposed: bool = False) -> None:
        """Append ``array`` (or its transpose, in slices) to the data file and point ``tensor`` at it."""
        offset = self.handle.tell()
        # Large tensors start on a page, as onnx's own writer places them, so the runtime can map them.
        if array.nbytes >= ALIGN_ABOVE_BYTES and offset % 4096:
            self.handle.write(b"\0" * (4096 - offset % 4096))
            offset = self.handle.tell()
        if transposed:
            step = max(1, CHUNK_BYTES // max(1, array.shape[0] * array.itemsize))
            for start in range(0, array.shape[1], step):
                np.ascontiguousarray(array[:, start:start + step].T).tofile(self.handle)
        else:
            np.ascontiguousarray(array).tofile(self.handle)  # no bytes copy of a large table
        del tensor.external_data[:]
        tensor.data_location = EXTERNAL
        for key, value in (("location", self.target_data.name), ("offset", str(offset)),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.stored.add(tensor.name)

    def inline(self, tensor) -> None:
        """Keep ``tensor`` inside the graph (small tensors: shapes must be inline for ORT's shape inference)."""
        if tensor.data_location == EXTERNAL:
            data = np.ascontiguousarray(self.read(tensor))
            del tensor.external_data[:]
            tensor.data_location = 0  # TensorProto.DEFAULT: inline
            tensor.raw_data = data.tobytes()
        self.stored.add(tensor.name)

    def close(self) -> None:
        self.handle.close()


#: Largest slice of a weight quantized at once: ORT's quantizer holds about four copies of
#: what it is given, which for a 150k-token LM head (545 MB in FP32) peaked at 2.6 GB.
CHUNK_BYTES = 64 * 2**20


#: Tensors smaller than this stay inside the graph (as onnx's own writer's threshold).
INLINE_BYTES = 1024
#: Tensors from this size start on a page boundary in the data file (onnx's ``align_threshold``).
ALIGN_ABOVE_BYTES = 2**20

#: Algorithms whose result for a column does not depend on the others (HQQ stops its
#: optimization on the whole tensor's error, so a slice would stop elsewhere).
SLICEABLE = frozenset({"default", "rtn", "k_quant"})


def _gptq_one(node, weight: np.ndarray, plan: QuantPlan, hessian: np.ndarray) -> tuple[list, list]:
    """One MatMul by GPTQ (:mod:`slmops.toolkit.weights.gptq`): a ``MatMulNBits`` with ORT's symmetric layout, no zero points."""
    from onnx import helper, numpy_helper

    k, n = weight.shape
    codes, scales = gptq.gptq(weight, hessian, plan.bits, plan.block_size)
    base = node.input[1]
    data, scale_name = f"{base}_Q{plan.bits}G{plan.block_size}", f"{base}_scales"
    new = helper.make_node("MatMulNBits", [node.input[0], data, scale_name], list(node.output),
                           name=f"{node.name}_Q{plan.bits}", domain="com.microsoft", K=k, N=n, bits=plan.bits,
                           block_size=plan.block_size, accuracy_level=plan.accuracy_level)
    return [new], [numpy_helper.from_array(gptq.pack(codes, plan.bits, plan.block_size, rows=k), data),
                   numpy_helper.from_array(scales.reshape(-1), scale_name)]


def _quantize_one(node, weight: np.ndarray, plan: QuantPlan, opsets, hessian: np.ndarray | None = None,
                  ) -> tuple[list, list]:
    """Quantize one MatMul with ORT's quantizer (or GPTQ given its ``hessian``); return its replacement nodes and initializers.

    A large weight ``[K, N]`` is quantized in slices of output columns: MatMulNBits stores
    every input row-major by ``N`` (blocks run along ``K``), so the slices' tensors stack
    into exactly what the whole weight gives, at a fraction of the memory.
    """
    from onnx import numpy_helper

    if plan.algorithm == "gptq":
        return _gptq_one(node, weight, plan, hessian)
    k, n = weight.shape
    step = max(1, min(n, CHUNK_BYTES // max(1, k * weight.itemsize)))
    if step >= n or plan.algorithm not in SLICEABLE:
        return _quantize_slice(node, weight, plan, opsets)
    parts = [_quantize_slice(node, np.ascontiguousarray(weight[:, start:start + step]), plan, opsets)
             for start in range(0, n, step)]
    nodes, first = parts[0]
    if len(nodes) != 1 or nodes[0].op_type != "MatMulNBits":
        raise ValueError(f"unexpected quantized form of {node.name}: {[x.op_type for x in nodes]}")
    stacked = []
    for index, init in enumerate(first):
        pieces = [numpy_helper.to_array(part[1][index]) for part in parts]
        stacked.append(numpy_helper.from_array(np.concatenate(pieces, axis=0), init.name))
    _set_attribute(nodes[0], "N", n)
    return nodes, stacked


def _quantize_slice(node, weight: np.ndarray, plan: QuantPlan, opsets) -> tuple[list, list]:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = helper.make_graph(
        [node], "one_matmul", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, node.input[1])])
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=opsets), block_size=plan.block_size,
                                     is_symmetric=plan.symmetric, accuracy_level=plan.accuracy_level,
                                     algo_config=_algo_config(plan, plan.bits))
    quantizer.process()
    done = quantizer.model.model.graph
    for new in done.node:
        if new.op_type == "MatMulNBits":
            _set_attribute(new, "accuracy_level", plan.accuracy_level)
    return list(done.node), list(done.initializer)


def _plan_with_bits(plan: QuantPlan, bits: int) -> QuantPlan:
    """``plan`` for one MatMul at ``bits`` (RTN and k-quant are 4-bit only: 8 bits go through the default; GPTQ does both)."""
    if bits == plan.bits:
        return plan
    return replace(plan, bits=bits, algorithm="default" if plan.algorithm in {"rtn", "k_quant"} else plan.algorithm)


def _split_value(node, weight: np.ndarray, plan: QuantPlan, opsets, value_columns: int,
                 hessian: np.ndarray | None = None) -> tuple[list, list]:
    """A fused ``qkv_proj`` as two MatMulNBits, query/key at ``plan.bits`` and value at ``plan.mix_bits``, concatenated."""
    from onnx import helper

    nodes, inits = [], []
    outputs = []
    for part, columns, bits in (("qk", slice(0, weight.shape[1] - value_columns), plan.bits),
                                ("v", slice(weight.shape[1] - value_columns, None), plan.mix_bits)):
        name = node.name.replace("/MatMul", f"/{part}/MatMul")
        piece = helper.make_node("MatMul", [node.input[0], f"{node.input[1]}.{part}"], [f"{node.output[0]}.{part}"],
                                 name=name)
        done, new_inits = _quantize_one(piece, np.ascontiguousarray(weight[:, columns]),
                                        _plan_with_bits(plan, bits), opsets, hessian)
        nodes += done
        inits += new_inits
        outputs.append(piece.output[0])
    nodes.append(helper.make_node("Concat", outputs, list(node.output), name=node.name.replace("/MatMul", "/Concat"),
                                  axis=-1))
    return nodes, inits


def _calibrate(source: Path, plan: QuantPlan, inputs: set[str]) -> dict[str, np.ndarray]:
    """GPTQ's ``X^T X`` per MatMul input over the calibration set (none for the other algorithms)."""
    if plan.algorithm != "gptq":
        return {}
    sequences = gptq.calibration_ids(source.parent, plan.calibration or None)
    sums, _ = gptq.hessians(source, sequences, inputs)
    return sums


def _quantize_body(model, plan: QuantPlan, weights: _Weights, source: Path) -> None:
    """MatMulNBits for every constant-weight MatMul (but the LM head unless ``lm_head_with_body``), one at a time.

    With a mix, the MatMuls it chooses get ``mix_bits``; a fused ``qkv_proj`` whose value
    part is chosen is split in two (query/key, value) joined by a Concat.
    """
    from tqdm.auto import tqdm

    if plan.algorithm in {"rtn", "k_quant"} and plan.bits != 4:
        raise ValueError(f"{plan.algorithm} quantizes to 4 bits only; use 'default' for 8 bits")
    if plan.mix and plan.mix not in MIXES:
        raise ValueError(f"unknown mix {plan.mix!r}: one of {sorted(MIXES)}")
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    # A weight that is also a graph input (a LoRA matrix kept apart, fed by the adapter at run time) is not constant.
    inputs = {value.name for value in graph.input}
    matmuls = [node for node in graph.node if node.op_type == "MatMul" and node.input[1] in inits
               and node.input[1] not in inputs
               and (node.name != LM_HEAD or plan.lm_head_with_body) and not node.name.startswith(ROTATION_PREFIX)]
    layers = 1 + max((int(m.group(1)) for node in matmuls if (m := _LAYER.search(node.name))), default=0)
    hessians = _calibrate(source, plan, {node.input[0] for node in matmuls})
    last_reader = {node.input[0]: index for index, node in enumerate(matmuls)}
    for index, node in enumerate(tqdm(matmuls, desc=f"quantize int{plan.bits}", unit="matmul", mininterval=5)):
        weight = weights.read(inits[node.input[1]])
        bits = mixed_bits(node.name, plan, layers) if plan.mix else plan.bits
        # MatMuls reading one input (qkv, gate/up) share its Hessian; it is freed after the last of them.
        hessian = (hessians.pop if last_reader[node.input[0]] == index else hessians.get)(node.input[0], None)
        if bits != plan.bits and "/qkv_proj/" in node.name:
            hidden = weight.shape[0]
            replacement, new_inits = _split_value(node, weight, plan, model.opset_import,
                                                  _value_columns(weights.source_dir, weight.shape[1], hidden), hessian)
        else:
            replacement, new_inits = _quantize_one(node, weight, _plan_with_bits(plan, bits), model.opset_import,
                                                   hessian)
        del weight
        for init in new_inits:
            weights.store(init)
        graph.initializer.extend(new_inits)
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
    # The FP32 weights nothing reads any more are dropped with the others by _quantized_lm_head_and_table.


def _set_attribute(node, name: str, value: int) -> None:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            attribute.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _quantized_lm_head_and_table(model, plan: QuantPlan, weights: _Weights) -> None:
    """Quantize the LM head and the embedding table in place (symmetric, our own layout)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    head = nodes.get(LM_HEAD)
    if head is not None and head.op_type != "MatMul":  # already quantized with the body
        head = None
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.name.startswith("/model/embed_tokens")), None)
    transpose = next((n for n in graph.node if n.op_type == "Transpose" and gather is not None
                      and n.output[0] == gather.input[0]), None)
    tied = head is not None and transpose is not None and transpose.input[0] == head.input[1]
    quantize_head = head is not None and head.input[1] in inits and plan.lm_head_bits < 32
    head_weight = weights.read(inits[head.input[1]]) if quantize_head or (tied and plan.embedding_bits < 32) else None

    table_name = None
    if quantize_head:
        k, n = head_weight.shape  # MatMul weight is [K, N]; MatMulNBits wants [N, K] rows.
        data, scales = _quantize_rows(head_weight.T, plan.lm_head_bits, plan.block_size)
        blocks = k // plan.block_size
        table_name = f"lm_head.MatMul.weight_Q{plan.lm_head_bits}G{plan.block_size}"
        graph.initializer.extend([
            numpy_helper.from_array(data.reshape(n, blocks, -1), table_name),
            numpy_helper.from_array(scales.reshape(-1), "lm_head.MatMul.weight_scales"),
        ])
        del data, scales
        new_head = helper.make_node(
            "MatMulNBits", [head.input[0], table_name, "lm_head.MatMul.weight_scales"], list(head.output),
            name=f"{LM_HEAD}_Q{plan.lm_head_bits}", domain="com.microsoft", K=k, N=n, bits=plan.lm_head_bits,
            block_size=plan.block_size, accuracy_level=plan.accuracy_level,
        )
        graph.node.insert(list(graph.node).index(head), new_head)
        graph.node.remove(head)

    if gather is not None and plan.embedding_bits < 32:
        if tied and table_name is not None and plan.embedding_bits == plan.lm_head_bits:
            # Share the LM head's quantized table: no second copy on disk.
            vocab, hidden = head_weight.shape[1], head_weight.shape[0]
            shape_name = "/model/embed_tokens/table_shape"
            graph.initializer.extend([
                numpy_helper.from_array(np.array([vocab, hidden * plan.lm_head_bits // 8], np.int64), shape_name),
                numpy_helper.from_array(np.array([vocab, hidden // plan.block_size], np.int64), shape_name + "_scales"),
            ])
            reshape = helper.make_node("Reshape", [table_name, shape_name], ["/model/embed_tokens/table"],
                                       name="/model/embed_tokens/Reshape")
            reshape_scales = helper.make_node("Reshape", ["lm_head.MatMul.weight_scales", shape_name + "_scales"],
                                              ["/model/embed_tokens/scales"], name="/model/embed_tokens/ReshapeScales")
            data_input, scales_input, extra = "/model/embed_tokens/table", "/model/embed_tokens/scales", [
                reshape, reshape_scales]
        else:
            source = transpose.input[0] if transpose is not None else gather.input[0]
            table = head_weight if tied and head_weight is not None else weights.read(inits[source])
            table = table.T if transpose is not None else table
            data, scales = _quantize_rows(table, plan.embedding_bits, plan.block_size)
            del table
            data_input, scales_input, extra = "model.embed_tokens.weight_Q", "model.embed_tokens.weight_scales", []
            graph.initializer.extend([numpy_helper.from_array(data, data_input),
                                      numpy_helper.from_array(scales, scales_input)])
            del data, scales
        new_gather = helper.make_node(
            "GatherBlockQuantized", [data_input, gather.input[1], scales_input], list(gather.output),
            name="/model/embed_tokens/GatherBlockQuantized", domain="com.microsoft",
            bits=plan.embedding_bits, block_size=plan.block_size, gather_axis=0, quantize_axis=1,
        )
        position = list(graph.node).index(gather)
        for node in [*extra, new_gather]:
            graph.node.insert(position, node)
            position += 1
        graph.node.remove(gather)
        if transpose is not None:
            graph.node.remove(transpose)

    elif gather is not None and transpose is not None and transpose.input[0] in inits and not any(
            transpose.input[0] in node.input for node in graph.node if node is not transpose):
        # The LM head no longer reads the tied FP32 table: store it the way the embedding
        # reads it (as the builder's own INT4 does) instead of transposing it at load time.
        graph.initializer.append(weights.write("model.embed_tokens.weight", weights.read(inits[transpose.input[0]]),
                                               transposed=True))
        gather.input[0] = "model.embed_tokens.weight"
        graph.node.remove(transpose)

    # Drop FP32 initializers nothing reads any more.
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


def quantize(source: Path, target: Path, plan: QuantPlan) -> None:
    """Quantize the FP32 model ``source`` to ``target`` (external data) following ``plan``, tensor by tensor.

    Example:
        >>> quantize(Path("fp32/model.onnx"), Path("int8/model.onnx"), QuantPlan(bits=8, lm_head_bits=8, embedding_bits=8))
    """
    import onnx
    from onnx import helper

    if plan.rotate:
        _quantize_rotated(source, target, plan)
        return
    # ORT's quantizer logs every node at INFO (to the root logger): silenced for this call only, so a process
    # that quantizes in-process (a test, a notebook) keeps its own INFO messages afterwards.
    silenced = logging.root.manager.disable
    logging.disable(logging.INFO)
    model = onnx.load(str(source), load_external_data=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = _Weights(source.parent, target.parent / f"{target.name}.data")
    try:
        _quantize_body(model, plan, weights, source)
        _quantized_lm_head_and_table(model, plan, weights)
        for init in model.graph.initializer:  # the rest (norms, biases, new tables) follow, one at a time
            if init.name in weights.stored:
                continue
            nbytes = int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            if nbytes < INLINE_BYTES:
                weights.inline(init)
            else:
                weights.store(init)
    finally:
        weights.close()
        logging.disable(silenced)
    onnx.save(model, str(target))


def _quantize_rotated(source: Path, target: Path, plan: QuantPlan) -> None:
    """Rotate ``source`` into a scratch folder beside ``target`` (its other files copied, for GPTQ's
    tokenizer), quantize that, and remove the scratch whatever happens."""
    import shutil

    scratch = target.parent / ".rotated-fp32"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        for f in source.parent.iterdir():
            if f.is_file() and not f.name.startswith(source.name):
                shutil.copy2(f, scratch / f.name)
        decoder = _decoder(source.parent)
        head_dim = int(decoder.get("head_size", 0))
        try:
            rotate(source, scratch / source.name, head_dim=head_dim,
                   value_columns=head_dim * int(decoder.get("num_key_value_heads", 0)))
        except UnsupportedGraph as exc:
            raise InputError(f"cannot rotate this model ({exc}): quantize it without rotate") from exc
        quantize(scratch / source.name, target, replace(plan, rotate=False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _decoder(model_dir: Path) -> dict:
    import json

    try:
        return json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    except (OSError, KeyError, ValueError):
        return {}


def weight_summary(model_file: Path) -> dict:
    """Where the weights went: parameter counts per storage type, and the LM head's and table's precision.

    Read from the graph alone (no tensor data), so it reports what was built, not what was asked.

    Example:
        >>> weight_summary(Path("int4/model.onnx"))["lm_head"]
        'int4'
    """
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    dims = {init.name: list(init.dims) for init in graph.initializer}
    dtypes = {init.name: onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name for init in graph.initializer}
    counts: dict[str, int] = {}
    counted: set[str] = set()
    where = {"lm_head": "absent", "embeddings": "absent"}
    for node in graph.node:
        found = _weight_of(node, dims, dtypes)
        if found is None:
            continue
        kind, name, parameters = found
        if name not in counted:
            counts[kind] = counts.get(kind, 0) + parameters
            counted.add(name)
        if node.name.startswith("/lm_head/"):
            where["lm_head"] = kind
        elif node.name.startswith("/model/embed_tokens/"):
            where["embeddings"] = kind
    return {"parameters": counts, **where}


def lookup_only_mb(model_file: Path) -> float:
    """MB of weights only ever looked up by row (an embedding table not shared with the LM head).

    Decoding a token reads one row of such a table, not all of it, so a decode-speed bound
    from bytes read per token leaves them out. Read from the graph alone.

    Example:
        >>> lookup_only_mb(Path("int4/model.onnx"))  # the builder's INT4 keeps a 113 MB FP32 table
        113.2
    """
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    sizes = {init.name: int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
             for init in graph.initializer}
    gathered, used_elsewhere = set(), set()
    for node in graph.node:
        target = gathered if node.op_type in ("Gather", "GatherBlockQuantized") else used_elsewhere
        target.update(name for name in node.input if name in sizes)
    return round(sum(sizes[name] for name in gathered - used_elsewhere) / 1e6, 1)


def _weight_of(node, dims: dict, dtypes: dict) -> tuple[str, str, int] | None:
    """``(storage kind, initializer name, parameter count)`` of a node that reads a weight table."""
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "MatMulNBits":
        return f"int{attrs['bits']}", node.input[1], attrs["K"] * attrs["N"]
    if node.op_type == "GatherBlockQuantized":
        data = node.input[0]
        # A reshaped view of the LM head's table is counted once, at the LM head.
        count = int(np.prod(dims[data])) * 8 // attrs["bits"] if data in dims else 0
        return f"int{attrs['bits']}", data, count
    if node.op_type == "MatMulInteger":
        return "int8", node.input[1], int(np.prod(dims.get(node.input[1], [0])))
    weight = {"MatMul": 1, "Gather": 0, "Transpose": 0}.get(node.op_type)
    if weight is None or node.input[weight] not in dims or len(dims[node.input[weight]]) != 2:
        return None
    name = node.input[weight]
    return {"float32": "fp32", "float16": "fp16"}.get(dtypes[name], dtypes[name]), name, int(np.prod(dims[name]))


@dataclass(frozen=True)
class QuantizeJob:
    """What the quantizer's child is asked (the ``quantize`` task's payload).

    Attributes:
        source: The FP32 ``model.onnx`` to read.
        target: The ``model.onnx`` to write (its weights beside it).
        plan: What to quantize and how.
    """

    source: str
    target: str
    plan: QuantPlan

    def to_json(self) -> dict:
        """The payload as the child reads it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> QuantizeJob:
        """A job as :meth:`to_json` wrote it."""
        return cls(str(data["source"]), str(data["target"]), QuantPlan(**data["plan"]))


def _quantize_task(payload: dict, _emit) -> dict:
    """Worker task: quantize a :class:`QuantizeJob`'s source into its target by its plan.

    Returns:
        The plan and the build's :func:`weight_summary`, for the log (the manifest reads the build itself).
    """
    job = QuantizeJob.from_json(payload)
    target = Path(job.target)
    quantize(Path(job.source), target, job.plan)
    return {"plan": asdict(job.plan), **weight_summary(target)}


#: How the model builder names the LoRA matrices it builds from a peft adapter
#: (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``; ``lora_B`` holds B times the LoRA scaling).
_LORA_WEIGHT = re.compile(r"\.lora_([AB])\.MatMul\.weight$")
#: The symbolic dimension of a LoRA input's rank (``lora_r.<module>``), one per module, so an adapter of
#: any rank, on all or some of the modules (the others keep rank 0), fits the same graph.
LORA_RANK_DIM = "lora_r"


@dataclass(frozen=True)
class LoraJob:
    """What the keep-apart child is asked (the ``keep-lora-apart`` task's payload).

    Attributes:
        source: The model builder's ``model.onnx`` built with an adapter (LoRA matrices as initializers).
        target: The ``model.onnx`` to write: the same graph with each LoRA matrix a graph input.
        adapter_file: The ``.onnx_adapter`` file to write with the matrices.
    """

    source: str
    target: str
    adapter_file: str

    def to_json(self) -> dict:
        """The payload as the child reads it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LoraJob:
        """A job as :meth:`to_json` wrote it."""
        return cls(str(data["source"]), str(data["target"]), str(data["adapter_file"]))


def keep_lora_apart(source: Path, target: Path, adapter_file: Path) -> dict[str, list[int]]:
    """Turn the LoRA matrices of a builder graph into graph inputs and save them as an ``.onnx_adapter`` file.

    Each input keeps a default: an empty matrix of rank 0 (``[in, 0]`` for A, ``[0, out]``
    for B), so the graph without an adapter computes the base model, and with one
    (``og.Adapters``, ``set_active_adapter``) the base plus ``B(Ax)``. The rank is a symbolic
    dimension of its module (:data:`LORA_RANK_DIM`), so adapters of other ranks on (some of) the same
    modules fit; the shapes the builder noted for the LoRA branch's outputs (its rank) are dropped.
    The base's weights are copied tensor by tensor into ``target``'s own data file.

    Returns:
        Input name to the matrix's shape, for every LoRA matrix moved out.

    Raises:
        ValueError: the graph holds no LoRA matrices (it was not built with ``adapter_path``).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = _Weights(source.parent, target.parent / f"{target.name}.data")
    matrices: dict[str, np.ndarray] = {}
    try:
        for init in model.graph.initializer:
            match = _LORA_WEIGHT.search(init.name)
            if match is None:
                nbytes = int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
                (weights.inline if nbytes < INLINE_BYTES else weights.store)(init)
                continue
            matrix = weights.read(init)
            matrices[init.name] = matrix
            rank_axis = 1 if match.group(1) == "A" else 0
            empty = list(matrix.shape)
            empty[rank_axis] = 0
            init.CopyFrom(numpy_helper.from_array(np.zeros(empty, dtype=matrix.dtype), init.name))
            rank = f"{LORA_RANK_DIM}.{init.name[:match.start()]}"
            dims = [rank if axis == rank_axis else size for axis, size in enumerate(matrix.shape)]
            model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, dims))
    finally:
        weights.close()
    if not matrices:
        raise ValueError(f"{source} holds no LoRA matrices: build it with the adapter (adapter_path)")
    noted = [info for info in model.graph.value_info if "/lora_A/" in info.name or "/lora_B/" in info.name]
    for info in noted:
        model.graph.value_info.remove(info)
    onnx.save(model, str(target))
    write_onnx_adapter(Path(adapter_file), matrices)
    return {name: list(matrix.shape) for name, matrix in matrices.items()}


def write_onnx_adapter(file: Path, matrices: dict[str, np.ndarray]) -> None:
    """Save LoRA matrices (graph input name to array) as an ONNX Runtime ``.onnx_adapter`` file."""
    import onnxruntime as ort

    # An OrtValue made from an array borrows its buffer: the contiguous copies must live until the export.
    arrays = {name: np.ascontiguousarray(matrix) for name, matrix in matrices.items()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in arrays.items()})
    file.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(file))


def _keep_lora_apart_task(payload: dict, _emit) -> dict:
    """Worker task: :func:`keep_lora_apart` for a :class:`LoraJob`; returns the inputs made and their shapes."""
    job = LoraJob.from_json(payload)
    return {"lora_inputs": keep_lora_apart(Path(job.source), Path(job.target), Path(job.adapter_file))}


if __name__ == "__main__":
    workers.serve({"quantize": _quantize_task, "keep-lora-apart": _keep_lora_apart_task})
