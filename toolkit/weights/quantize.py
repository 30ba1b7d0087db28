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
from dataclasses import replace
from pathlib import Path

import numpy as np

from slmops.toolkit.core import codec, workers
from slmops.toolkit.domain.genai_config import decoder_config
from slmops.toolkit.domain.quant_plan import LAYER_NAME, MIXES, QuantizeJob, QuantPlan, mixed_bits, plan_with_bits
from slmops.toolkit.weights import calibration, gptq
from slmops.toolkit.weights.head_and_table import quantize_lm_head_and_table
from slmops.toolkit.weights.onnx_weights import LM_HEAD, ROTATION_PREFIX
from slmops.toolkit.weights.rotated import rotated_copy
from slmops.toolkit.weights.weight_store import CHUNK_BYTES, INLINE_BYTES, WeightStore
from slmops.toolkit.weights.weight_summary import weight_summary


def _value_columns(model_dir: Path, weight_columns: int, hidden: int) -> int:
    """How many of a fused ``qkv_proj``'s output columns are the value projection (from ``genai_config.json``)."""
    decoder = decoder_config(model_dir)
    try:
        return int(decoder["head_size"]) * int(decoder["num_key_value_heads"])
    except (KeyError, ValueError):
        return (weight_columns - hidden) // 2  # q is as wide as the hidden state, k as v


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
                                        plan_with_bits(plan, bits), opsets, hessian)
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
    sequences = calibration.calibration_ids(source.parent, plan.calibration or None)
    sums, _ = calibration.hessians(source, sequences, inputs)
    return sums


def _quantize_body(model, plan: QuantPlan, weights: WeightStore, source: Path) -> None:
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
    layers = 1 + max((int(m.group(1)) for node in matmuls if (m := LAYER_NAME.search(node.name))), default=0)
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
            replacement, new_inits = _quantize_one(node, weight, plan_with_bits(plan, bits), model.opset_import,
                                                   hessian)
        del weight
        for init in new_inits:
            weights.store(init)
        graph.initializer.extend(new_inits)
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
    # The FP32 weights nothing reads any more are dropped with the others by quantize_lm_head_and_table.


def _set_attribute(node, name: str, value: int) -> None:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            attribute.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def quantize(source: Path, target: Path, plan: QuantPlan) -> None:
    """Quantize the FP32 model ``source`` to ``target`` (external data) following ``plan``, tensor by tensor.

    Example:
        >>> quantize(Path("fp32/model.onnx"), Path("int8/model.onnx"), QuantPlan(bits=8, lm_head_bits=8, embedding_bits=8))
    """
    import onnx
    from onnx import helper

    if plan.rotate:
        with rotated_copy(source, target.parent / ".rotated-fp32") as rotated:
            quantize(rotated, target, replace(plan, rotate=False))
        return
    # ORT's quantizer logs every node at INFO (to the root logger): silenced for this call only, so a process
    # that quantizes in-process (a test, a notebook) keeps its own INFO messages afterwards.
    silenced = logging.root.manager.disable
    logging.disable(logging.INFO)
    model = onnx.load(str(source), load_external_data=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = WeightStore(source.parent, target.parent / f"{target.name}.data")
    try:
        _quantize_body(model, plan, weights, source)
        quantize_lm_head_and_table(model, plan, weights)
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


def _quantize_task(payload: dict, _emit) -> dict:
    """Worker task: quantize a :class:`QuantizeJob`'s source into its target by its plan.

    Returns:
        The plan and the build's :func:`weight_summary`, for the log (the manifest reads the build itself).
    """
    job = codec.load(QuantizeJob, payload)
    target = Path(job.target)
    quantize(Path(job.source), target, job.plan)
    return {"plan": codec.dump(job.plan), **codec.dump(weight_summary(target))}


if __name__ == "__main__":
    workers.serve({"quantize": _quantize_task})
