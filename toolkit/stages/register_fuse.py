"""Registration's fused projections: sibling ``MatMulNBits`` on the same input become one wider node.

ONNX Runtime GenAI's builder packs Q, K and V into one ``MatMulNBits`` but leaves an MLP's gate and
up projections apart: two nodes reading the same input, each one call into the CPU kernel and its
thread pool. On one token at a time (decode) those calls are short and their fixed cost is a large
part of them; one node of the summed width does the same work in one call. The fused node's
weights and scales are the two nodes' rows, one after the other (the layout stores each output
column's blocks on their own, so concatenating along N changes no value), and a ``Split`` gives
back the two outputs under their own names: every output column is computed by the same kernel
from the same bytes as before. A build with zero points (asymmetric quantization, such as the
``mixed`` recipe's) has its zero points concatenated the same way (one row of packed zero points
per output column); two nodes of which only one has zero points are left apart.

The fused weights go to :data:`FUSED_DATA`, a new file beside the graph; the graph's own weights
file may be a hard link into the build folder and is never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.weights.weight_store import WeightStore

FUSED_DATA = "model_fused.onnx.data"
_SPLIT_SIZES_AS_INPUT = 13  # the ONNX opset from which Split takes its sizes as an input


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@dataclass(frozen=True)
class _Sibling:
    """A fusable ``MatMulNBits``: its node, and its weight, scale and zero point (None: none) initializers."""

    node: object
    weight: object
    scales: object
    zero_points: object | None

    @property
    def key(self) -> tuple:
        """What two nodes must share to be fused: input, K, bits, block size, accuracy level, the types of weights and
        scales, and whether they have zero points and of which type."""
        attrs = {a.name: a.i for a in self.node.attribute}
        zero_type = None if self.zero_points is None else self.zero_points.data_type
        return (self.node.input[0], attrs.get("K"), attrs.get("bits", 4), attrs.get("block_size"),
                attrs.get("accuracy_level", 0), self.scales.data_type, self.weight.data_type, zero_type)

    @property
    def parts(self) -> tuple[str, ...]:
        """The initializers concatenated along N: weight and scales, and zero points where the node has them."""
        return ("weight", "scales") if self.zero_points is None else ("weight", "scales", "zero_points")

    @property
    def n(self) -> int:
        """The node's output width N."""
        return next(a.i for a in self.node.attribute if a.name == "N")


def _siblings(model) -> list[list[_Sibling]]:
    """Groups of two or more plain ``MatMulNBits`` (A, weights and scales in a weights file, zero points or none: no
    group index or bias) sharing input and attributes."""
    initializers = {t.name: t for t in model.graph.initializer}
    groups: dict[tuple, list[_Sibling]] = {}
    for node in model.graph.node:
        if (node.op_type != "MatMulNBits" or len(node.input) not in (3, 4)
                or not all(name in initializers and initializers[name].external_data for name in node.input[1:3])
                or (len(node.input) == 4 and node.input[3] not in initializers)):
            continue
        zero_points = initializers[node.input[3]] if len(node.input) == 4 else None
        sibling = _Sibling(node, initializers[node.input[1]], initializers[node.input[2]], zero_points)
        groups.setdefault(sibling.key, []).append(sibling)
    return [group for group in groups.values() if len(group) > 1]


def _fused_weights(group: list[_Sibling], store: WeightStore) -> list:
    """The group's weights and scales (and zero points) concatenated along N, appended to ``store``'s data file."""
    import numpy as np

    name = group[0].node.name + "/fused"
    return [store.write(f"{name}.{part}", np.concatenate([store.read(getattr(s, part)) for s in group]))
            for part in group[0].parts]


def _fuse_group(model, group: list[_Sibling], weights: list) -> None:
    """Replace the group's nodes in ``model`` by one ``MatMulNBits`` on ``weights`` and a ``Split``."""
    import numpy as np
    from onnx import helper, numpy_helper

    first = group[0].node
    name = first.name + "/fused"
    widths = numpy_helper.from_array(np.array([s.n for s in group], dtype=np.int64), name + ".widths")
    model.graph.initializer.extend([*weights, widths])
    attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
    fused = helper.make_node("MatMulNBits", [first.input[0], *(w.name for w in weights)], [name + "/output_0"],
                             name=name, domain=first.domain, **{**attrs, "N": sum(s.n for s in group)})
    split = helper.make_node("Split", [fused.output[0], widths.name], [s.node.output[0] for s in group],
                             name=name + "/Split", axis=-1)
    nodes = list(model.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.name == first.name)
    gone = {s.node.name for s in group}
    kept = [n for n in nodes[:at] if n.name not in gone] + [fused, split] + [n for n in nodes[at:] if n.name not in gone]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    unused = {getattr(s, part).name for s in group for part in s.parts}
    remaining = [t for t in model.graph.initializer if t.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(remaining)


def fuse_siblings(folder: Path, filenames: list[str]) -> int:
    """Fuse sibling ``MatMulNBits`` in each of ``filenames`` in ``folder`` (graphs with the same weights).

    The first graph's groups are fused and their weights written once to :data:`FUSED_DATA`; the
    same groups (same node names) in the other graphs read them from there. Every graph is
    rewritten (unlinked first, so a hard link's source is untouched).

    Returns:
        How many nodes were fused away in the first graph (0: nothing to fuse, or a graph's ONNX
        opset older than 13; nothing written).
    """
    import copy

    import onnx

    models = {name: onnx.load(str(folder / name), load_external_data=False) for name in filenames}
    groups = _siblings(models[filenames[0]])
    if not groups or min(_default_opset(model) for model in models.values()) < _SPLIT_SIZES_AS_INPUT:
        return 0
    (folder / FUSED_DATA).unlink(missing_ok=True)
    store = WeightStore(folder, folder / FUSED_DATA)
    try:
        weights = {group[0].node.name: _fused_weights(group, store) for group in groups}
    finally:
        store.close()
    for model in models.values():
        by_name = {s.node.name: s for group in _siblings(model) for s in group}
        for group in groups:
            if all(s.node.name in by_name for s in group):
                _fuse_group(model, [by_name[s.node.name] for s in group], copy.deepcopy(weights[group[0].node.name]))
    for name, model in models.items():
        (folder / name).unlink()
        onnx.save(model, str(folder / name))
    return sum(len(group) - 1 for group in groups)
