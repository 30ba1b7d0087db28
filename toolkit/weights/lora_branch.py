"""The LoRA side branch of one graph (``--adapter-in-graph``) once its base is quantized: the base's rounding error
made up for in the branch.

``y = W4 x + B (A x)`` keeps the fine-tune's ``B A`` exact, but the base's own rounding ``W - W4`` stays: it is
what an INT4 build loses, merged or not. As LoftQ (Li et al., 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization
for Large Language Models") and LQ-LoRA (Guo et al., 2023, "LQ-LoRA: Low-rank plus Quantized Matrix
Decomposition") do for the LoRA of a quantized base, and LQER (Zhang et al., 2024, "LQER: Low-Rank Quantization
Error Reconstruction for LLMs"), the branch also carries the best rank-``r'`` approximation ``U V`` of that error
(truncated SVD): ``A' = [A | U]``, ``B' = [B ; V]``. The fine-tune's matrices are unchanged (their columns and
rows come first); the branch is rank ``r + r'``, stored as the fine-tune's.

Laid out folded (:attr:`~slmops.toolkit.domain.options.BranchLayout.FOLDED`), ``W4 x + B' (A' x)`` is one
``MatMulNBits`` of ``[W4 ; B']`` over ``[x, A' x]``: ``B'``'s rows are appended along ``K`` in blocks of their own
(their own scales, at the base's bits), so the branch's second MatMul and its Add are gone and only ``A'`` and a
Concat remain beside the base. Decode of a small model pays per node more than per byte of a small MatMul.

Runs as a worker task (``lora-side-branch``, see :mod:`slmops.toolkit.core.workers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmops.toolkit.core import codec, workers
from slmops.toolkit.domain.options import BRANCH_BITS, BranchLayout
from slmops.toolkit.domain.quant_plan import LoraBranched, LoraBranchJob
from slmops.toolkit.weights.lora_apart import FP16_SUFFIX, is_lora_weight
from slmops.toolkit.weights.onnx_weights import read_initializer
from slmops.toolkit.weights.weight_store import INLINE_BYTES, WeightStore


@dataclass(frozen=True)
class Branch:
    """One projection with its LoRA side branch, as the model builder lays it out.

    Attributes:
        add: The Add of the base's output and the branch's (its output is the projection's).
        base: The base's MatMul (``MatMulNBits`` once quantized).
        lora_a: The branch's first MatMul (``x A``).
        lora_b: The branch's second MatMul (``(x A) B``).
        a_weight: The FP16 initializer of ``A`` (``[in, r]``).
        b_weight: The FP16 initializer of ``B`` (``[r, out]``, the LoRA scaling in it).
    """

    add: object
    base: object
    lora_a: object
    lora_b: object
    a_weight: str
    b_weight: str


def find_branches(graph) -> list[Branch]:
    """Every projection of ``graph`` whose output is the base's MatMul plus a LoRA branch read from FP16 constants."""
    producer = {out: node for node in graph.node for out in node.output}
    casts = {node.output[0]: node.input[0] for node in graph.node
             if node.op_type == "Cast" and node.input[0].endswith(FP16_SUFFIX) and is_lora_weight(node.input[0])}
    branches = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        base, lora_b = producer.get(node.input[0]), producer.get(node.input[1])
        lora_a = producer.get(lora_b.input[0]) if lora_b is not None and lora_b.op_type == "MatMul" else None
        if (base is None or lora_a is None or lora_a.op_type != "MatMul" or base.op_type not in {"MatMul", "MatMulNBits"}
                or lora_a.input[0] != base.input[0] or lora_a.input[1] not in casts or lora_b.input[1] not in casts):
            continue
        branches.append(Branch(node, base, lora_a, lora_b, casts[lora_a.input[1]], casts[lora_b.input[1]]))
    return branches


def _attribute(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def dequantize_nbits(node, read) -> np.ndarray:
    """The ``[K, N]`` float weight a ``MatMulNBits`` node computes with (``read``: initializer name to array).

    ``B`` is ``[N, blocks, block_size * bits / 8]`` codes (two 4-bit codes a byte, the lower ``K`` index in the
    low nibble), ``scales`` one per block, ``zero_points`` packed as the codes per column (absent: the middle
    code, ``2^(bits-1)``).
    """
    k, n, bits, block = (_attribute(node, name) for name in ("K", "N", "bits", "block_size"))
    codes = read(node.input[1])
    blocks = codes.shape[1]
    codes = _unpack(codes, bits).reshape(n, blocks, block).astype(np.float32)
    scales = read(node.input[2]).reshape(n, blocks).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        zero = read(node.input[3]).reshape(n, -1)
        if zero.dtype == np.uint8:
            zero = _unpack(zero, bits)[:, :blocks].astype(np.float32)
        else:  # float zero points (HQQ): the value of code 0 is -zero * scale
            zero = zero.astype(np.float32)
    else:
        zero = np.full((n, blocks), 2.0 ** (bits - 1), np.float32)
    weight = (codes - zero[..., None]) * scales[..., None]
    return np.ascontiguousarray(weight.reshape(n, blocks * block)[:, :k].T)


def error_factors(error: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``U [K, rank]`` and ``V [rank, N]`` whose product is the best rank-``rank`` approximation of ``error`` (SVD).

    The singular values are split evenly between the two, so neither factor's values outgrow FP16's range.
    """
    left, values, right = np.linalg.svd(error.astype(np.float64), full_matrices=False)
    root = np.sqrt(values[:rank])
    return (left[:, :rank] * root).astype(np.float32), (root[:, None] * right[:rank]).astype(np.float32)


def _grow(read, branch: Branch, weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``branch``'s ``A`` and ``B`` (float32) with the rank-``rank`` stand-in for its base's rounding error appended."""
    a, b = read(branch.a_weight).astype(np.float32), read(branch.b_weight).astype(np.float32)
    u, v = error_factors(weight - dequantize_nbits(branch.base, read), rank)
    return np.concatenate([a, u], axis=1), np.concatenate([b, v], axis=0)


def _nbits_matmul(node, weight: np.ndarray, bits: int, accuracy_level: int, opsets,
                  symmetric: bool = True, block: int = 0) -> tuple[list, list]:
    """``node`` (a MatMul of ``weight`` ``[K, N]``) as ``MatMulNBits`` by ONNX Runtime's quantizer (blocks of 32 inputs,
    or 16 when ``K`` is no multiple of 32, so a rank-16 ``B`` is not padded, unless ``block`` is given; symmetric
    unless told)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import matmul_nbits_quantizer as q

    block = block or (32 if weight.shape[0] % 32 == 0 else 16)
    graph = helper.make_graph(
        [node], "one_matmul", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ascontiguousarray(weight), node.input[1])])
    config = q.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, accuracy_level=accuracy_level,
                                            bits=bits, op_types_to_quantize=("MatMul",))
    quantizer = q.MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=opsets), algo_config=config)
    quantizer.process()
    done = quantizer.model.model.graph
    return list(done.node), list(done.initializer)


def _grows(node, rank: int) -> bool:
    """Whether ``node``'s branch carries its rounding error at rank ``rank``: a ``MatMulNBits`` of under 8 bits."""
    return rank > 0 and node.op_type == "MatMulNBits" and _attribute(node, "bits") < 8


def _foldable(node) -> bool:
    """Whether ``node`` is a ``MatMulNBits`` whose ``K`` is whole blocks (rows appended start a block of their own)."""
    return node.op_type == "MatMulNBits" and _attribute(node, "K") % _attribute(node, "block_size") == 0


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``[..., n]`` (one a byte) packed as ``MatMulNBits`` stores them (4 bits: two a byte, the first low)."""
    codes = codes.astype(np.uint8)
    return codes if bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of :func:`_pack`: ``[..., m]`` bytes to ``[..., 2 m]`` codes at 4 bits (as they are at 8)."""
    return packed if bits == 8 else np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


def quantize_rows(rows: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (``[r, N]``, float) as ``MatMulNBits`` blocks along ``r``: symmetric, zero point ``2^(bits-1)``.

    ``r`` is padded with zero rows to whole blocks.

    Returns:
        The packed codes ``[N, blocks, block * bits / 8]`` and the scales ``[N, blocks]`` (float32).
    """
    count, width = rows.shape
    blocks = -(-count // block)
    padded = np.zeros((blocks * block, width), np.float32)
    padded[:count] = rows
    grouped = padded.T.reshape(width, blocks, block)
    scales = np.abs(grouped).max(axis=-1) / (2 ** (bits - 1) - 1)
    codes = np.rint(grouped / np.where(scales > 0, scales, 1)[..., None]) + 2 ** (bits - 1)
    return _pack(np.clip(codes, 0, 2 ** bits - 1), bits), scales.astype(np.float32)


def _fold_rows(branch: Branch, rows: np.ndarray, joined: str, read) -> tuple[object, list]:
    """``branch``'s base ``MatMulNBits`` reading ``joined`` (``[x, x A]``) with ``rows`` (``[r, N]``, ``B``'s, ``r``
    whole blocks) appended along ``K``: their own blocks, scales and zero points, at the base's bits.

    The node keeps the base's name and writes the Add's output; its weights are new initializers (``..._folded``).
    """
    from onnx import helper, numpy_helper

    base = branch.base
    k, n, bits, block = (_attribute(base, name) for name in ("K", "N", "bits", "block_size"))
    codes, scales = read(base.input[1]), read(base.input[2])
    blocks = codes.shape[1]
    extra_codes, extra_scales = quantize_rows(rows, bits, block)
    added = extra_codes.shape[1]
    arrays = [np.concatenate([codes, extra_codes], axis=1),
              np.concatenate([scales.reshape(n, blocks), extra_scales.astype(scales.dtype)], axis=1)]
    arrays[1] = arrays[1].reshape(-1) if scales.ndim == 1 else arrays[1]
    if len(base.input) > 3 and base.input[3]:
        zero = read(base.input[3])
        middle = 2 ** (bits - 1)
        if zero.dtype == np.uint8:
            whole = np.concatenate([_unpack(zero.reshape(n, -1), bits)[:, :blocks], np.full((n, added), middle, np.uint8)], axis=1)
            if bits == 4 and whole.shape[1] % 2:
                whole = np.concatenate([whole, np.full((n, 1), middle, np.uint8)], axis=1)
            whole = _pack(whole, bits)
        else:  # float zero points (HQQ)
            whole = np.concatenate([zero.reshape(n, blocks), np.full((n, added), middle, zero.dtype)], axis=1)
        arrays.append(whole.reshape(-1) if zero.ndim == 1 else whole)
    names = [f"{name}_folded" for name in base.input[1:1 + len(arrays)]]
    attributes = {a.name: helper.get_attribute_value(a) for a in base.attribute}
    attributes["K"] = k + added * block
    folded = helper.make_node("MatMulNBits", [joined, *names, *base.input[1 + len(arrays):]], list(branch.add.output),
                              name=base.name, domain=base.domain, **attributes)
    return folded, [numpy_helper.from_array(np.ascontiguousarray(array), name)
                    for array, name in zip(arrays, names, strict=True)]


class _Rewrite:
    """The side branches of one graph being rewritten: its weights read and written, and the nodes that replace
    others (by the ``id`` of the node each replaces; an empty list drops it)."""

    def __init__(self, model, weights: WeightStore, bits: int) -> None:
        self.model, self.weights, self.bits = model, weights, bits
        self.inits = {init.name: init for init in model.graph.initializer}
        self.order = {id(node): index for index, node in enumerate(model.graph.node)}
        self.new_nodes: dict[int, list] = {}
        self.new_inits: list = []

    def read(self, name: str) -> np.ndarray:
        return self.weights.read(self.inits[name])

    def keep(self, made: list) -> None:
        """Store the initializers ``made`` beside the graph (external data where large) as new ones."""
        import onnx

        self.new_inits.extend(self.weights.write(init.name, onnx.numpy_helper.to_array(init)) for init in made)

    def drop_branch(self, branch: Branch) -> None:
        """Remove ``branch``'s own MatMuls and Add (its base's replacement writes the Add's output)."""
        self.new_nodes[id(branch.lora_a)] = self.new_nodes[id(branch.lora_b)] = self.new_nodes[id(branch.add)] = []

    def store_a(self, node, a: np.ndarray, a_weight: str, level: int) -> list:
        """The nodes of ``node`` (``x A``) computing with ``a``: its FP16 constant rewritten, or ``MatMulNBits``."""
        from onnx import helper

        if self.bits == 16:
            self.inits[a_weight].CopyFrom(self.weights.write(a_weight, a.astype(np.float16)))
            return [node]
        plain = helper.make_node("MatMul", [node.input[0], a_weight.removesuffix(FP16_SUFFIX)], list(node.output),
                                 name=node.name)
        nodes, made = _nbits_matmul(plain, a, self.bits, level, self.model.opset_import)
        self.keep(made)
        return nodes

    def merge_8bit(self, branch: Branch, weight: np.ndarray) -> None:
        """``branch`` merged into its base, re-quantized to 8 bits from FP32 ``weight`` + ``A B`` as a merged build
        rounds it (the base's block size and zero points), writing the Add's output (new ``..._merged`` weights)."""
        from onnx import helper

        base = branch.base
        a, b = self.read(branch.a_weight).astype(np.float32), self.read(branch.b_weight).astype(np.float32)
        plain = helper.make_node("MatMul", [base.input[0], f"{base.input[1].rsplit('_Q', 1)[0]}_merged"],
                                 list(branch.add.output), name=base.name.rsplit("_Q", 1)[0])
        symmetric = not (len(base.input) > 3 and base.input[3])
        nodes, made = _nbits_matmul(plain, weight.astype(np.float32) + a @ b, 8, _attribute(base, "accuracy_level"),
                                    self.model.opset_import, symmetric=symmetric, block=_attribute(base, "block_size"))
        self.keep(made)
        self.new_nodes[id(base)] = nodes
        self.drop_branch(branch)

    def add_branch(self, branch: Branch, a: np.ndarray, b: np.ndarray) -> None:
        """``branch`` kept added (``x A`` then ``B``, then the Add), computing with ``a`` and ``b``."""
        level = _attribute(branch.base, "accuracy_level") if branch.base.op_type == "MatMulNBits" else 0
        self.new_nodes[id(branch.lora_a)] = self.store_a(branch.lora_a, a, branch.a_weight, level)
        if self.bits == 16:
            self.inits[branch.b_weight].CopyFrom(self.weights.write(branch.b_weight, b.astype(np.float16)))
        else:
            self.new_nodes[id(branch.lora_b)] = self.store_a(branch.lora_b, b, branch.b_weight, level)

    def fold(self, group: list[tuple[Branch, np.ndarray, np.ndarray]]) -> None:
        """The branches of ``group`` (they read one input: q, k, v or gate, up) folded into their bases: one ``A`` for
        all (in graph order), its columns padded to whole blocks; each base reads all of ``x A``, ``B``'s rows at its
        own columns' place and zeros elsewhere."""
        from onnx import helper

        group = sorted(group, key=lambda item: self.order[id(item[0].base)])
        first = group[0][0]
        block = _attribute(first.base, "block_size")
        a = np.concatenate([item[1] for item in group], axis=1)
        a = np.pad(a, ((0, 0), (0, -a.shape[1] % block)))
        joined = f"{first.base.output[0]}/lora_concat"
        nodes = [*self.store_a(first.lora_a, a, first.a_weight, _attribute(first.base, "accuracy_level")),
                 helper.make_node("Concat", [first.base.input[0], first.lora_a.output[0]], [joined],
                                  name=f"{first.base.name}/lora_concat", axis=-1)]
        start = 0
        for branch, part, b in group:
            rows = np.zeros((a.shape[1], b.shape[1]), np.float32)
            rows[start:start + part.shape[1]] = b
            start += part.shape[1]
            folded, made = _fold_rows(branch, rows, joined, self.read)
            self.keep(made)
            self.new_nodes[id(branch.base)] = [*nodes, folded] if branch is first else [folded]
            self.drop_branch(branch)


def side_branch(source: Path, fp32: Path, target: Path, rank: int, bits: int = 16,
                layout: BranchLayout = BranchLayout.ADD) -> LoraBranched:
    """Rewrite the quantized graph ``source`` (its LoRA an FP16 side branch) into ``target``, the base's error made up for.

    Args:
        source: The quantized ``model.onnx`` whose LoRA is an FP16 side branch (:func:`~slmops.toolkit.weights.
            lora_apart.lora_in_fp16`, then the quantizer).
        fp32: The ``model.onnx`` it was quantized from (the base's FP32 weights, under the same names).
        target: The ``model.onnx`` to write (its weights beside it).
        rank: ``r'``, the rank added to each branch whose base is a ``MatMulNBits`` of under 8 bits (0: none).
        bits: The branch's storage (:data:`~slmops.toolkit.domain.options.BRANCH_BITS`): 16 keeps FP16 constants
            (float MatMuls), 8 makes each of its MatMuls an 8-bit ``MatMulNBits`` (a fourth of a float branch's bytes).
        layout: :class:`~slmops.toolkit.domain.options.BranchLayout`: folded, ``B`` joins each ``MatMulNBits``
            base whose ``K`` is whole blocks (its rows at the base's bits; ``bits`` is then ``A``'s storage); the
            other branches stay added.

    Returns:
        How many branches there are, and how many grew (:class:`~slmops.toolkit.domain.quant_plan.LoraBranched`).
    """
    import onnx

    if bits not in BRANCH_BITS:
        raise ValueError(f"branch bits {bits}: one of {BRANCH_BITS}")
    model = onnx.load(str(source), load_external_data=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = WeightStore(source.parent, target.parent / f"{target.name}.data")
    branches = find_branches(model.graph)
    merge8 = layout == BranchLayout.FOLDED_MERGE8
    fp32_inits = ({init.name: init for init in onnx.load(str(fp32), load_external_data=False).graph.initializer}
                  if rank or merge8 else {})
    rewrite = _Rewrite(model, weights, bits)
    grown = merged = 0
    to_fold: dict[tuple[str, int], list[tuple[Branch, np.ndarray, np.ndarray]]] = {}
    try:
        for branch in branches:
            original = fp32_inits.get(branch.base.input[1].rsplit("_Q", 1)[0])
            if merge8 and original is not None and _foldable(branch.base) and _attribute(branch.base, "bits") == 8:
                rewrite.merge_8bit(branch, read_initializer(original, fp32.parent))
                merged += 1
                continue
            if original is not None and _grows(branch.base, rank):
                a, b = _grow(rewrite.read, branch, read_initializer(original, fp32.parent).astype(np.float32), rank)
                grown += 1
            elif bits != 16 or layout == BranchLayout.FOLDED:
                a, b = rewrite.read(branch.a_weight).astype(np.float32), rewrite.read(branch.b_weight).astype(np.float32)
            else:
                continue
            if layout != BranchLayout.ADD and _foldable(branch.base):  # grouped by input and block size
                to_fold.setdefault((branch.base.input[0], _attribute(branch.base, "block_size")), []).append((branch, a, b))
            else:
                rewrite.add_branch(branch, a, b)
        for group in to_fold.values():
            rewrite.fold(group)
        _replace_nodes(model.graph, rewrite.new_nodes, rewrite.new_inits, weights)
    finally:
        weights.close()
    onnx.save(model, str(target))
    return LoraBranched(branches=len(branches), grown=grown, error_rank=rank, branch_bits=bits, layout=str(layout),
                        folded=sum(len(group) for group in to_fold.values()), merged=merged)


def _replace_nodes(graph, new_nodes: dict[int, list], new_inits: list, weights: WeightStore) -> None:
    """Put ``new_nodes`` (by the ``id`` of the node each replaces) in ``graph``, drop what no node reads any more
    (the branch's old ``Cast`` nodes and constants), store the kept initializers and add ``new_inits``."""
    from onnx import helper

    kept_nodes = []
    for node in graph.node:
        kept_nodes += new_nodes.get(id(node), [node])
    used = {name for node in kept_nodes for name in node.input}
    kept_nodes = [n for n in kept_nodes if n.op_type != "Cast" or n.output[0] in used]
    used = {name for node in kept_nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(kept_nodes)
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    for init in kept:
        if init.name not in weights.stored:
            nbytes = int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            (weights.inline if nbytes < INLINE_BYTES else weights.store)(init)
    graph.initializer.extend([*kept, *new_inits])
    # Shapes the builder noted for the branch's outputs hold its old rank; a folded base's old output is gone.
    made = {name for node in kept_nodes for name in node.output}
    for info in [info for info in graph.value_info
                 if "/lora_A/" in info.name or "/lora_B/" in info.name or info.name not in made]:
        graph.value_info.remove(info)


def _side_branch_task(payload: dict, _emit) -> dict:
    """Worker task: :func:`side_branch` for a :class:`LoraBranchJob`."""
    job = codec.load(LoraBranchJob, payload)
    return codec.dump(side_branch(Path(job.source), Path(job.fp32), Path(job.target), job.error_rank, job.bits,
                                   BranchLayout(job.layout)))


if __name__ == "__main__":
    workers.serve({"lora-side-branch": _side_branch_task})
