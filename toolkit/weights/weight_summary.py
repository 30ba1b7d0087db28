"""What a built ONNX graph holds, read from the graph alone (no tensor data): where the weights went."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.toolkit.domain.results.conversion import WeightSummary


def weight_summary(model_file: Path) -> WeightSummary:
    """Where the weights went: parameter counts per storage type, and the LM head's and table's precision.

    Read from the graph alone (no tensor data), so it reports what was built, not what was asked.

    Example:
        >>> weight_summary(Path("int4/model.onnx")).lm_head
        'int4'
    """
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    dims = {init.name: list(init.dims) for init in graph.initializer}
    dtypes = {init.name: onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name for init in graph.initializer}
    counts: dict[str, int] = {}
    counted: set[str] = set()
    lm_head = embeddings = "absent"
    for node in graph.node:
        found = _weight_of(node, dims, dtypes)
        if found is None:
            continue
        kind, name, parameters = found
        if name not in counted:
            counts[kind] = counts.get(kind, 0) + parameters
            counted.add(name)
        if node.name.startswith("/lm_head/"):
            lm_head = kind
        elif node.name.startswith("/model/embed_tokens/"):
            embeddings = kind
    return WeightSummary(counts, lm_head, embeddings)


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
