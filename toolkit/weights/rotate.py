"""Rotate an FP32 ONNX Runtime GenAI model's residual stream before quantizing it (QuaRot-style).

A transformer whose blocks read the residual stream only through RMS norms and write to
it only through linear layers computes the same function when the stream is multiplied
by an orthogonal matrix ``R`` (Ashkboos et al. 2024, "SliceGPT" section 3 and "QuaRot"
section 4): ``rms(x R) = rms(x)``, so with each norm's gain folded into the weights that
read it, ``norm(x R) = norm(x) R``. The weights become

* embedding table ``E R``; every MatMul reading a norm ``R^T diag(g) W``;
* every MatMul writing to the stream ``W R``;
* the final norm's gain: folded into an untied LM head, or (when the LM head shares the
  embedding table) one FP32 MatMul ``R^T diag(g) R`` before it, so the table stays shared.

Optionally the value/output projections are rotated per attention head by ``Q`` (``W_v Q``,
``Q^T W_o``), which attention's weighted sum of values leaves unchanged.

Nothing changes in what the FP32 graph computes (up to float rounding); what changes is
that outlier channels are spread over all of them, which calibrated rounding (GPTQ) turns
into a closer 4-bit build (measured in docs/benchmarks.md, "Rotation and GPTQ": round-to-nearest
can get worse). A graph whose stream is read or written any other way (Gemma's norms after
each block, biases in the norms) is refused with :class:`UnsupportedGraph`. The whole FP32
model is held in memory, with a float32 copy of the weights it changes (about 12 bytes per
parameter at the peak); a rotated FP32 build reads the reference text with top-1 1.0 and KL 0.0
against the unrotated one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmops.toolkit.weights.onnx_weights import LM_HEAD, ROTATION_PREFIX, read_initializer

NORMS = {"SimplifiedLayerNormalization": 1, "SkipSimplifiedLayerNormalization": 2}  # op -> gain's input


class UnsupportedGraph(ValueError):
    """The graph's residual stream is not read through RMS norms and written by MatMuls only."""


@dataclass(frozen=True)
class Rotation:
    """What :func:`rotate` changed.

    Attributes:
        hidden: Width of the residual stream.
        readers: MatMuls that read a norm (gain folded, rotated on their input side).
        writers: MatMuls that write to the stream (rotated on their output side).
        heads: Value/output projection pairs rotated per head (0 when not asked).
        tied_head: The LM head shares the embedding table (an FP32 MatMul was added before it).
    """

    hidden: int
    readers: int
    writers: int
    heads: int
    tied_head: bool


def random_orthogonal(size: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal ``[size, size]`` float64 matrix (QR of a Gaussian, signs fixed)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(size, size)))
    return q * np.sign(np.diag(r))


class _Weights:
    """A loaded graph's initializers, who reads and writes each tensor, and the weights changed so far.

    Changes are kept in float32 (one copy of each changed weight) and written back by :meth:`commit`.
    """

    def __init__(self, graph) -> None:
        self.graph = graph
        self.inits = {init.name: init for init in graph.initializer}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.arrays: dict[str, np.ndarray] = {}

    def weight(self, name: str) -> np.ndarray:
        """A float64 copy of initializer ``name`` as changed so far (changes are kept in float32)."""
        from onnx import numpy_helper

        if name not in self.arrays:
            self.arrays[name] = numpy_helper.to_array(self.inits[name]).astype(np.float32)
        return self.arrays[name].astype(np.float64)

    def store(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = value.astype(np.float32)

    def constant_matmul(self, node) -> bool:
        return node is not None and node.op_type == "MatMul" and node.input[1] in self.inits

    def commit(self) -> None:
        """Write the changed weights into the graph, one at a time (the old and new copies never all coexist)."""
        from onnx import numpy_helper

        for name in list(self.arrays):
            self.inits[name].CopyFrom(numpy_helper.from_array(self.arrays.pop(name), name))


def _load(source: Path):
    """``source`` with every initializer inside the graph, so the save writes every one to the new data file."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.external_data:
            tensor.CopyFrom(numpy_helper.from_array(read_initializer(tensor, source.parent), tensor.name))
    return model


def _landmarks(w: _Weights) -> tuple[list, object, object, bool]:
    """The graph's RMS norms, embedding Gather and LM head MatMul, and whether the head shares the table."""
    graph = w.graph
    norms = [node for node in graph.node if node.op_type in NORMS]
    if not norms:
        raise UnsupportedGraph("no RMS norms in the graph")
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.name.startswith("/model/embed_tokens")), None)
    if gather is None:
        raise UnsupportedGraph("no embedding Gather")
    head = next((n for n in graph.node if n.name == LM_HEAD), None)
    if not w.constant_matmul(head):
        raise UnsupportedGraph("no constant LM head MatMul")
    transpose = w.producer.get(gather.input[0])
    tied = transpose is not None and transpose.op_type == "Transpose" and transpose.input[0] == head.input[1]
    return norms, gather, head, tied


def _stream_writers(w: _Weights, norms: list, gather) -> list:
    """The MatMuls that write to the residual stream, once it is checked to be read only by the norms.

    The stream: the embedding's output, each Skip norm's sum, and what writes into the Skip norms.
    """
    stream = {gather.output[0]} | {n.output[3] for n in norms if len(n.output) > 3 and n.output[3]}
    writers = []
    for node in norms:
        if node.op_type == "SkipSimplifiedLayerNormalization":
            if len(node.input) > 3 and node.input[3]:
                raise UnsupportedGraph(f"{node.name} has a bias")
            for name in node.input[:2]:
                if name in stream:
                    continue
                writer = w.producer.get(name)
                if not w.constant_matmul(writer):
                    raise UnsupportedGraph(f"{node.name} reads {name}, not written by a MatMul")
                writers.append(writer)
                stream.add(name)
        elif node.input[0] not in stream:
            raise UnsupportedGraph(f"{node.name} normalizes {node.input[0]}, which is not the residual stream")
    for name in stream:
        for reader in w.consumers[name]:
            if reader.op_type not in NORMS:
                raise UnsupportedGraph(f"{reader.name} ({reader.op_type}) reads the residual stream {name}")
    return writers


def _fold_readers(w: _Weights, norms: list, head, r: np.ndarray) -> tuple[list, np.ndarray]:
    """Fold each norm's gain into the MatMuls reading it, rotated on their input side (``R^T diag(g) W``).

    Returns:
        The readers changed, and the final norm's gain (the LM head's, folded by :func:`_rotate_head`).
    """
    readers, final_gain = [], None
    for node in norms:
        gain_name = node.input[NORMS[node.op_type]]
        gain = w.weight(gain_name)
        for reader in w.consumers[node.output[0]]:
            if reader is head:
                final_gain = gain
            elif w.constant_matmul(reader) and reader.input[0] == node.output[0]:
                w.store(reader.input[1], r.T @ (gain[:, None] * w.weight(reader.input[1])))
                readers.append(reader)
            else:
                raise UnsupportedGraph(f"{reader.name} ({reader.op_type}) reads norm {node.name}")
        w.store(gain_name, np.ones_like(gain))
    if final_gain is None:
        raise UnsupportedGraph("the LM head does not read a norm")
    return readers, final_gain


def _rotate_head(w: _Weights, head, gather, final_gain: np.ndarray, r: np.ndarray, tied: bool) -> None:
    """The final norm's gain folded into an untied LM head, or one FP32 MatMul before a tied one; the table ``E R``."""
    from onnx import helper, numpy_helper

    if tied:
        # Table E R (the head's weight is E^T), and R^T diag(g) R before the head keeps it shared.
        w.store(head.input[1], r.T @ w.weight(head.input[1]))
        name = ROTATION_PREFIX + "final_norm_gain"
        w.graph.initializer.append(numpy_helper.from_array((r.T @ (final_gain[:, None] * r)).astype(np.float32), name))
        mid = ROTATION_PREFIX + "final_norm_gain/output_0"
        w.graph.node.insert(list(w.graph.node).index(head),
                            helper.make_node("MatMul", [head.input[0], name], [mid], name=ROTATION_PREFIX + "MatMul"))
        head.input[0] = mid
    else:
        w.store(head.input[1], r.T @ (final_gain[:, None] * w.weight(head.input[1])))
        table = gather.input[0]
        if table not in w.inits:
            raise UnsupportedGraph("the embedding table is not a constant")
        w.store(table, w.weight(table) @ r)


def _rotate_values(w: _Weights, head_dim: int, value_columns: int, seed: int) -> int:
    """Rotate the value/output projections per attention head by ``Q``; returns the output projections rotated."""
    heads = 0
    q = random_orthogonal(head_dim, seed + 1)
    blocks = np.kron(np.eye(value_columns // head_dim), q)
    for node in w.graph.node:
        if "/o_proj/" in node.name and w.constant_matmul(node):
            weight = w.weight(node.input[1])
            w.store(node.input[1], np.kron(np.eye(weight.shape[0] // head_dim), q).T @ weight)
            heads += 1
        elif w.constant_matmul(node) and ("/qkv_proj/" in node.name or "/v_proj/" in node.name):
            # The value columns (the last ones of a fused qkv_proj) and their bias, if any.
            for name in [node.input[1]] + [i for c in w.consumers[node.output[0]] if c.op_type == "Add"
                                           for i in c.input if i in w.inits]:
                weight = w.weight(name)
                weight[..., weight.shape[-1] - value_columns:] = weight[..., weight.shape[-1] - value_columns:] @ blocks
                w.store(name, weight)
    return heads


def rotate(source: Path, target: Path, *, seed: int = 0, head_dim: int = 0, value_columns: int = 0) -> Rotation:
    """Write ``source`` (an FP32 ``model.onnx``) to ``target`` with its residual stream rotated.

    Args:
        source: FP32 model file (external data beside it).
        target: Output model file; its data goes to ``target.name + ".data"``.
        seed: Seed of the random orthogonal rotation.
        head_dim: Attention head size; with ``value_columns``, also rotate values per head.
        value_columns: How many of a fused ``qkv_proj``'s output columns are values (the last ones).

    Raises:
        UnsupportedGraph: The stream is read or written other than through RMS norms and MatMuls.
    """
    import onnx

    model = _load(source)
    w = _Weights(model.graph)
    norms, gather, head, tied = _landmarks(w)
    hidden = w.weight(head.input[1]).shape[0]
    r = random_orthogonal(hidden, seed)
    writers = _stream_writers(w, norms, gather)
    readers, final_gain = _fold_readers(w, norms, head, r)
    for writer in writers:
        w.store(writer.input[1], w.weight(writer.input[1]) @ r)
    _rotate_head(w, head, gather, final_gain, r, tied)
    heads = _rotate_values(w, head_dim, value_columns, seed) if head_dim and value_columns else 0
    w.commit()
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{target.name}.data", size_threshold=1024)
    return Rotation(hidden=hidden, readers=len(readers), writers=len(writers), heads=heads, tied_head=tied)
