"""The LM head and the embedding table quantized in place, in the symmetric table layout.

When the model ties them, the embedding becomes a ``GatherBlockQuantized`` over the LM head's
quantized table (one table on disk, as the builder's ``shared_embeddings``); otherwise the
table gets its own quantized copy. See :mod:`slmops.toolkit.weights.table_layout`.
"""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.weights.onnx_weights import LM_HEAD
from slmops.toolkit.weights.table_layout import quantize_rows
from slmops.toolkit.weights.weight_store import WeightStore


def quantize_lm_head_and_table(model, plan: QuantPlan, weights: WeightStore) -> None:
    """Quantize the LM head and the embedding table in place (symmetric, our own layout)."""
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
    table_name = _quantize_head(graph, head, head_weight, plan) if quantize_head else None
    if gather is not None and plan.embedding_bits < 32:
        if tied and table_name is not None and plan.embedding_bits == plan.lm_head_bits:
            table = _shared_table(graph, table_name, head_weight, plan)
        else:
            source = transpose.input[0] if transpose is not None else gather.input[0]
            rows = head_weight if tied and head_weight is not None else weights.read(inits[source])
            table = _own_table(graph, rows.T if transpose is not None else rows, plan)
            del rows
        _gather_quantized(graph, gather, transpose, table, plan)
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


def _quantize_head(graph, head, head_weight: np.ndarray, plan: QuantPlan) -> str:
    """The LM head MatMul as a ``MatMulNBits`` over its table in our layout; the table's initializer name."""
    k, n = head_weight.shape  # MatMul weight is [K, N]; MatMulNBits wants [N, K] rows.
    data, scales = quantize_rows(head_weight.T, plan.lm_head_bits, plan.block_size)
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
    return table_name


def _shared_table(graph, table_name: str, head_weight: np.ndarray, plan: QuantPlan) -> tuple[str, str, list]:
    """The LM head's quantized table reshaped for the embedding (no second copy on disk): ``(data, scales, nodes)``."""
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
    return "/model/embed_tokens/table", "/model/embed_tokens/scales", [reshape, reshape_scales]


def _own_table(graph, table: np.ndarray, plan: QuantPlan) -> tuple[str, str, list]:
    """The embedding table ``[vocab, hidden]`` quantized on its own: ``(data, scales, nodes)``."""
    data, scales = quantize_rows(table, plan.embedding_bits, plan.block_size)
    data_input, scales_input = "model.embed_tokens.weight_Q", "model.embed_tokens.weight_scales"
    graph.initializer.extend([numpy_helper.from_array(data, data_input), numpy_helper.from_array(scales, scales_input)])
    return data_input, scales_input, []


def _gather_quantized(graph, gather, transpose, table: tuple[str, str, list], plan: QuantPlan) -> None:
    """Replace the embedding's ``Gather`` (and the tied table's ``Transpose``) by a ``GatherBlockQuantized`` over ``table``."""
    data_input, scales_input, extra = table
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
