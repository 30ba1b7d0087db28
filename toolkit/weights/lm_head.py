"""The LM head on the last position only: a serving graph whose prefill skips the vocabulary projection of every other token.

A decoder graph from the model builder projects every position of the prompt through the LM head
(``[batch, sequence, hidden] x [hidden, vocab]``), and generation keeps only the last row: on
SmolLM2-135M (vocabulary 49,152, hidden 576) that projection is a tenth of a 128-token prefill. The
builder's own ``prune_lm_head`` puts a ``Gather(axis=1, index=-1)`` and an ``Unsqueeze`` before the
head so the ``logits`` output is ``[batch, 1, vocab]``; ONNX Runtime GenAI (0.14 and later) reads
such a graph as "trimmed prefill logits" from that output's static 1. This module makes the same
edit on a finished graph, so the parity checks and every all-position comparison keep the full
graph and only the copy that is served (the registered one) is pruned, with the full graph kept
beside it (:data:`ALL_POSITIONS`) for what reads every position. Only graph files are written:
the weights stay in the same external data file, by reference.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where a served folder keeps its full graph (every position's logits) beside the pruned ``model.onnx``.
ALL_POSITIONS = "model_all_positions.onnx"
#: Names of the nodes and constants the edit adds (the builder's own, under ``/lm_head/prune``).
GATHER, UNSQUEEZE = "/lm_head/prune/Gather", "/lm_head/prune/Unsqueeze"
LAST, AXES = "/lm_head/prune/last_index", "/lm_head/prune/axes"


def _lm_head_node(graph, logits: str):
    """The MatMul (or MatMulNBits) node of the LM head: ``logits``' producer, or reached through Casts only.

    None when anything else (a LoRA branch's Add, a softcap) sits between them: a node that still
    reads every position would give the output the sequence's length again.
    """
    producers = {out: node for node in graph.node for out in node.output}
    name = logits
    while name in producers:
        node = producers[name]
        if node.op_type in ("MatMul", "MatMulNBits"):
            return node
        if node.op_type not in ("Cast", "Identity"):
            return None
        name = node.input[0]
    return None


def is_pruned(model_file: str | os.PathLike[str], logits: str = "logits") -> bool:
    """Whether the graph's ``logits`` output has a static 1 as its sequence dimension (no weights read)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    output = next((o for o in model.graph.output if o.name == logits), None)
    if output is None:
        return False
    dims = output.type.tensor_type.shape.dim
    return len(dims) == 3 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def prune_lm_head(model_file: str | os.PathLike[str], out_file: str | os.PathLike[str], logits: str = "logits") -> bool:
    """Write ``model_file``'s graph to ``out_file`` with the LM head on the last position only.

    ``out_file`` must sit beside the external data file the graph names (the weights are not read
    or copied). The edit is the model builder's ``prune_lm_head``: ``Gather(axis=1, index=-1)`` and
    ``Unsqueeze(axes=[1])`` before the head's MatMul, and the ``logits`` output declared
    ``[batch, 1, vocab]``.

    Returns:
        False (and nothing written) when the graph is pruned already or has no MatMul behind ``logits``.

    Example:
        >>> prune_lm_head("models/int4/model.onnx", "served/model.onnx")
        True
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    output = next((o for o in graph.output if o.name == logits), None)
    head = _lm_head_node(graph, logits) if output is not None else None
    if head is None or any(node.name == GATHER for node in graph.node):
        return False
    hidden = head.input[0]
    graph.initializer.extend([helper.make_tensor(LAST, TensorProto.INT64, [], [-1]),
                              helper.make_tensor(AXES, TensorProto.INT64, [1], [1])])
    gather = helper.make_node("Gather", [hidden, LAST], [f"{GATHER}/output_0"], name=GATHER, axis=1)
    unsqueeze = helper.make_node("Unsqueeze", [f"{GATHER}/output_0", AXES], [f"{UNSQUEEZE}/output_0"], name=UNSQUEEZE)
    head.input[0] = f"{UNSQUEEZE}/output_0"
    position = list(graph.node).index(head)
    graph.node.insert(position, unsqueeze)
    graph.node.insert(position, gather)
    # Values between the head and the output had the sequence's length; their recorded shapes no longer hold.
    downstream = {out for node in graph.node[position:] for out in node.output}
    kept = [info for info in graph.value_info if info.name not in downstream]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    dim = output.type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, str(out_file))
    return True


def serve_last_position(folder: str | os.PathLike[str], filename: str = "model.onnx") -> bool:
    """In a served copy of a model folder, prune ``filename`` and keep its full graph as :data:`ALL_POSITIONS`.

    ``filename`` may be a hard link to the source's graph: it is moved aside, not written through,
    so the source is untouched. ONNX Runtime GenAI and Foundry Local load the pruned graph (the
    ``genai_config.json`` is unchanged); what reads the logits of every position (agreement with
    the FP32 reference) loads :func:`all_positions_graph`.

    Returns:
        Whether the folder now serves a pruned graph that this call made.
    """
    graph, keep = Path(folder) / filename, Path(folder) / ALL_POSITIONS
    if keep.exists() or is_pruned(graph):
        return False
    os.replace(graph, keep)
    if prune_lm_head(keep, graph):
        return True
    os.replace(keep, graph)
    return False


def all_positions_graph(folder: str | os.PathLike[str]) -> str | None:
    """The file name of the graph that gives every position's logits, when it is not the configured one."""
    return ALL_POSITIONS if (Path(folder) / ALL_POSITIONS).is_file() else None


def gather_each_row(model_file: str | os.PathLike[str], positions_input: str) -> bytes | None:
    """A copy of ``model_file``, whose LM head is pruned to the last position, that takes each row's own position.

    The pruned graph's ``Gather`` of the last position becomes a ``GatherND`` (``batch_dims=1``) of the
    positions in the new int64 input ``positions_input`` (``[batch, 1]``), so right-padded prompts of
    different lengths are prefilled in one run. The weights stay in the folder's external data.

    Returns:
        The edited graph's bytes (load with the folder as the working directory's external-data base),
        or None when the graph is not pruned or not in this module's form.
    """
    if not is_pruned(model_file):
        return None
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    gather = next((node for node in model.graph.node if node.name == GATHER and node.op_type == "Gather"), None)
    if gather is None:
        return None
    gather.op_type, gather.input[1] = "GatherND", positions_input  # [batch, hidden] from [batch, sequence, hidden]
    del gather.attribute[:]
    gather.attribute.append(helper.make_attribute("batch_dims", 1))
    model.graph.input.append(helper.make_tensor_value_info(positions_input, TensorProto.INT64, ["batch_size", 1]))
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == LAST))
    return model.SerializeToString()
