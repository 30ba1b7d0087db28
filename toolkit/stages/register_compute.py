"""Registration's compute-type probe: FP32 or int8 compute for each shape of the prompt graph's 4-bit ``MatMulNBits``.

Which of ONNX Runtime's two CPU kernels multiplies a prompt's rows faster depends on the projection's
shape (K, N) and on the machine: on one 2-core machine the 135M model's fused gate/up projection was
faster in FP32 compute and its down projection in int8 compute, and the 0.5B shape's the other way
round. So registration measures it: each shape of the graph's 4-bit nodes that multiply the prompt's
rows (a group: the layers' QKV, O, fused gate/up and down projections) is timed alone, in a session of
one node with weights of that node's shapes and types (random values: the kernel's time does not depend
on them), on :data:`PROBE_ROWS` rows, at ``accuracy_level`` 0 and 4 alternated, and the faster median
is kept (FP32 compute, the prompt graph's default, on a tie).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

from slmops.toolkit.domain.results.registration import ComputeGroup, PromptCompute

INT8_COMPUTE, FP32_COMPUTE = 4, 0
#: The prompt length the probe multiplies (a typical prompt's rows).
PROBE_ROWS = 128
#: Timed measurements per compute type, alternated between the two.
REPEATS = 5
#: Each measurement repeats the node's run until it lasts this long (short nodes are timed over several runs).
MEASURE_MS = 15.0
_G_IDX = 4  # MatMulNBits' optional input of each row's block index


@dataclass(frozen=True)
class NodeShape:
    """What a ``MatMulNBits``'s kernel time depends on: its attributes and its weights' shapes and types.

    Attributes:
        k: Input features.
        n: Output features.
        bits: Weight bits.
        block_size: Elements per quantization block.
        weights: Each input after the first (the quantized weights, scales, zero points...): name in
            the graph ('' for an input left out), element type (ONNX's), dimensions.
    """

    k: int
    n: int
    bits: int
    block_size: int
    weights: tuple[tuple[str, int, tuple[int, ...]], ...]

    @property
    def key(self) -> tuple:
        """The group: nodes of one key run the same kernel on the same shapes."""
        return self.k, self.n, self.bits, self.block_size, tuple((bool(name), kind, dims)
                                                                 for name, kind, dims in self.weights)


def _attribute(node, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def node_shape(node, initializers: dict) -> NodeShape:
    """``node``'s :class:`NodeShape`, its weights' types and dimensions read from ``initializers`` (name: tensor)."""
    weights = tuple((name, int(initializers[name].data_type), tuple(int(d) for d in initializers[name].dims))
                    if name in initializers else (name, 0, ()) for name in node.input[1:])
    return NodeShape(_attribute(node, "K", 0), _attribute(node, "N", 0), _attribute(node, "bits", 4),
                     _attribute(node, "block_size", 32), weights)


def _one_node_model(shape: NodeShape, level: int, rows: int):
    """A model of one ``MatMulNBits`` of ``shape`` at ``accuracy_level`` ``level`` (weights random, stored inline)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inputs, tensors = ["a"], []
    for index, (name, kind, dims) in enumerate(shape.weights, start=1):
        if not name:
            inputs.append("")
            continue
        dtype = helper.tensor_dtype_to_np_dtype(kind)
        if index == _G_IDX:  # each row's block: the only values the kernel reads as indices
            values = (np.arange(int(np.prod(dims))) // shape.block_size).reshape(dims).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            values = rng.integers(0, np.iinfo(dtype).max, dims, dtype=dtype, endpoint=True)
        else:
            values = (rng.random(dims) * 0.01).astype(dtype)
        tensors.append(numpy_helper.from_array(values, f"w{index}"))
        inputs.append(f"w{index}")
    scales_type = shape.weights[1][1] if len(shape.weights) > 1 else onnx.TensorProto.FLOAT  # the input's type
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=shape.k, N=shape.n,
                            bits=shape.bits, block_size=shape.block_size, accuracy_level=level)
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("a", scales_type, [1, rows, shape.k])],
                              [helper.make_tensor_value_info("y", scales_type, [1, rows, shape.n])], tensors)
    return helper.make_model(graph, ir_version=10,
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def time_levels(shape: NodeShape, rows: int, threads: int) -> tuple[float, float]:
    """Median ms of one run of a ``shape`` node on ``rows`` rows: FP32 compute, int8 compute (alternated)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper as onnx_helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")  # neither session's threads take the other's cores
    sessions = {level: ort.InferenceSession(_one_node_model(shape, level, rows).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
                for level in (FP32_COMPUTE, INT8_COMPUTE)}
    dtype = onnx_helper.tensor_dtype_to_np_dtype(shape.weights[1][1] if len(shape.weights) > 1 else 1)
    feed = {"a": np.random.default_rng(1).standard_normal((1, rows, shape.k)).astype(dtype)}
    for session in sessions.values():  # warm-up: the first run allocates
        session.run(None, feed)
    started = time.perf_counter()
    sessions[FP32_COMPUTE].run(None, feed)
    calls = max(1, round(MEASURE_MS / 1000 / max(time.perf_counter() - started, 1e-6)))
    times: dict[int, list[float]] = {level: [] for level in sessions}
    for repeat in range(REPEATS):
        for level in (sorted(sessions) if repeat % 2 == 0 else sorted(sessions, reverse=True)):
            started = time.perf_counter()
            for _ in range(calls):
                sessions[level].run(None, feed)
            times[level].append((time.perf_counter() - started) * 1000 / calls)
    return statistics.median(times[FP32_COMPUTE]), statistics.median(times[INT8_COMPUTE])


def choose_compute(shapes: Iterable[NodeShape], rows: int = PROBE_ROWS, threads: int = 0,
                   forced: dict[tuple, int] | None = None) -> tuple[PromptCompute, dict[tuple, int]]:
    """Probe each group of ``shapes`` (one per node) and choose its compute type.

    Args:
        shapes: The prompt graph's 4-bit nodes that multiply the prompt's rows.
        rows: The prompt length timed.
        threads: Intra-op threads (0: ONNX Runtime's default).
        forced: A group's ``accuracy_level`` given rather than measured (by :attr:`NodeShape.key`).

    Returns:
        The record, and each group's ``accuracy_level`` by key.
    """
    groups: dict[tuple, list[NodeShape]] = {}
    for shape in shapes:
        groups.setdefault(shape.key, []).append(shape)
    rows_out, levels = [], {}
    for key, members in groups.items():
        shape = members[0]
        if forced and key in forced:
            fp32_ms = int8_ms = 0.0
            levels[key] = forced[key]
        else:
            fp32_ms, int8_ms = time_levels(shape, rows, threads)
            levels[key] = INT8_COMPUTE if int8_ms < fp32_ms else FP32_COMPUTE
        rows_out.append(ComputeGroup(shape.k, shape.n, shape.bits, shape.block_size, len(members),
                                     round(fp32_ms, 3), round(int8_ms, 3), levels[key]))
    return PromptCompute(rows, threads, tuple(rows_out)), levels
