"""LoRA kept apart from the base: the builder graph's LoRA matrices as graph inputs, and ``.onnx_adapter`` files,
or left as an FP16 side branch of the one graph (:func:`lora_in_fp16`).

Runs as a worker task (``keep-lora-apart``, see :mod:`slmops.toolkit.core.workers`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from slmops.toolkit.core import codec, workers
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.adapters import ADAPTER_CONFIG, AdapterSource
from slmops.toolkit.domain.quant_plan import LoraJob, LoraKept
from slmops.toolkit.weights.weight_store import INLINE_BYTES, WeightStore

#: A LoRA matrix's layer, module and side, in peft's names (``...layers.0.self_attn.q_proj.lora_A.weight``) and in
#: the model builder's graph inputs (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``).
_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:.*\.)?(\w+)\.lora_([AB])\.(?:MatMul\.)?weight$")


def lora_matrices(adapter: AdapterSource, inputs: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """An adapter's LoRA matrices under the graph input names of a build whose LoRA was kept apart.

    The model builder stores A as ``[in, r]`` and B as ``[r, out]`` times the LoRA scaling
    (alpha / r, alpha / sqrt(r) with rsLoRA), each under a name that keeps the layer and the
    module; peft saves A as ``[r, in]`` and B as ``[out, r]``. The rank is free (the graph's
    rank dimension is symbolic); a module the graph has no input for cannot be applied.

    Args:
        adapter: A checked adapter of the build's base.
        inputs: The build's LoRA input names and the shapes they were built with.

    Returns:
        Input name to float32 matrix, for every matrix of the adapter.

    Raises:
        InputError: per-module ranks or alphas, a LoRA bias, or a module (or size) the build has no input for.
    """
    from safetensors.numpy import load_file

    config = json.loads((adapter.path / ADAPTER_CONFIG).read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("lora_bias"):
        raise InputError(f"{adapter.path}: per-module ranks or alphas (rank_pattern, alpha_pattern) or LoRA biases "
                         "cannot be kept apart yet: convert it without --keep-adapter (merged).")
    scale = adapter.alpha / (adapter.rank ** 0.5 if config.get("use_rslora") else adapter.rank)
    by_key = {m.groups(): name for name in inputs if (m := _LORA_KEY.search(name))}
    matrices = {}
    for name, array in load_file(adapter.path / "adapter_model.safetensors").items():
        match = _LORA_KEY.search(name)
        target = by_key.get(match.groups()) if match else None
        if target is not None:
            side_b = match.group(3) == "B"
            matrix = (array.T * (scale if side_b else 1.0)).astype(np.float32)
            fixed = 1 if side_b else 0  # the layer's own size must match; the rank is free
        if target is None or matrix.shape[fixed] != inputs[target][fixed]:
            raise InputError(f"{adapter.path}: {name} has no LoRA input of its size in the build (its LoRA inputs "
                             "are those of the first adapter): keep apart only adapters of the same base on the "
                             "same modules, or convert this one on its own.")
        matrices[target] = matrix
    return matrices


#: peft's trained token rows (``trainable_token_indices``): the new values of those rows of the embedding table.
_TOKEN_ROWS = "trainable_tokens_delta"


def token_rows(adapter: Path) -> list[int]:
    """The embedding rows an adapter trains besides its LoRA (peft's ``trainable_token_indices``), or none."""
    indices = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text()).get("trainable_token_indices") or []
    if isinstance(indices, dict):  # {"embed_tokens": [...]}: one table
        indices = [i for rows in indices.values() for i in rows]
    return [int(i) for i in indices]


def split_token_rows(adapter: AdapterSource, out: Path) -> AdapterSource:
    """An adapter that also trains token rows, as a base holding those rows and the adapter's LoRA alone over it.

    The rows (:func:`token_rows`: new values of some rows of the embedding table, which a tied LM
    head shares) are applied only by a merge: written into a copy of the base, as the merge writes
    them, the LoRA can then stay apart over it (``--adapter-in-graph``).

    Args:
        adapter: A checked adapter with token rows.
        out: Where the base copy (``out/base``) and the adapter's LoRA (``out/adapter``) go.

    Returns:
        The adapter without token rows, over the base with them.
    """
    import shutil
    from dataclasses import replace

    from safetensors.torch import load_file, save_file

    rows = token_rows(adapter.path)
    base, lora = out / "base", out / "adapter"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(adapter.base, base)
    tensors = load_file(adapter.path / "adapter_model.safetensors")
    values = next(array for name, array in tensors.items() if name.endswith(_TOKEN_ROWS))
    for file in base.glob("*.safetensors"):
        weights = load_file(file)
        table = next((name for name in weights if name.endswith("embed_tokens.weight")), None)
        if table is not None:
            weights[table][rows] = values.to(weights[table].dtype)
            save_file(weights, file, metadata={"format": "pt"})
    shutil.copytree(adapter.path, lora)
    save_file({name: array for name, array in tensors.items() if not name.endswith(_TOKEN_ROWS)},
              lora / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((lora / ADAPTER_CONFIG).read_text())
    config.pop("trainable_token_indices", None)
    (lora / ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": str(base)}, indent=2))
    return replace(adapter, path=lora, base=base)


#: How the model builder names the LoRA matrices it builds from a peft adapter
#: (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``; ``lora_B`` holds B times the LoRA scaling), and
#: (:data:`FP16_SUFFIX`) their FP16 copies in a graph whose LoRA stays in it, or their 8-bit codes, scales and zero
#: points (:mod:`slmops.toolkit.weights.lora_branch`).
_LORA_WEIGHT = re.compile(r"\.lora_([AB])\.MatMul\.weight(?:_fp16|_Q\d+|_scales|_zero_points)?$")

#: The suffix of a LoRA matrix stored in FP16 (:func:`lora_in_fp16`), read through a Cast to float.
FP16_SUFFIX = "_fp16"


def is_lora_weight(name: str) -> bool:
    """Whether ``name`` is a LoRA matrix of a builder graph (built with ``adapter_path``): kept in float, never quantized."""
    return _LORA_WEIGHT.search(name) is not None


def lora_bytes(model: Path) -> int:
    """The bytes of the LoRA matrices stored as constants in the graph ``model`` (0 when it has none).

    A side branch folded into its base (:mod:`slmops.toolkit.weights.lora_branch`: ``B``'s rows appended along ``K``
    to the base's ``MatMulNBits`` weights, named ``..._folded``) counts those rows' share of the base's bytes: the
    width of ``x A`` it reads over its ``K``. A LoRA merged into an 8-bit base costs no bytes of its own.
    """
    import onnx
    from onnx import helper

    graph = onnx.load(str(model), load_external_data=False).graph
    sizes = {init.name: int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
             for init in graph.initializer}
    dims = {init.name: list(init.dims) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def width(node) -> int:  # the columns of x A that ``node`` (the branch's A) writes
        if node.op_type == "MatMulNBits":
            return next(a.i for a in node.attribute if a.name == "N")
        weight = producer.get(node.input[1])  # a Cast of the FP16 constant
        return dims[weight.input[0] if weight is not None else node.input[1]][1]

    folded = 0.0
    for node in graph.node:
        concat = producer.get(node.input[0]) if node.op_type == "MatMulNBits" and node.input else None
        if concat is None or concat.op_type != "Concat" or not node.input[1].endswith("_folded"):
            continue
        k = next(a.i for a in node.attribute if a.name == "K")
        folded += width(producer[concat.input[1]]) / k * sum(sizes[name] for name in node.input[1:4]
                                                             if name.endswith("_folded"))
    return sum(size for name, size in sizes.items() if is_lora_weight(name)) + round(folded)


#: The symbolic dimension of a LoRA input's rank (``lora_r.<module>``), one per module, so an adapter of
#: any rank, on all or some of the modules (the others keep rank 0), fits the same graph.
LORA_RANK_DIM = "lora_r"


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
    weights = WeightStore(source.parent, target.parent / f"{target.name}.data")
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


def lora_in_fp16(source: Path, target: Path) -> int:
    """Store the LoRA matrices of a builder graph in FP16, each read through a ``Cast`` to float: the side branch.

    The graph then computes ``y = W x + B(A x)`` with A and B rounded to FP16 (half their FP32 bytes;
    a LoRA matrix's values are far inside FP16's range) and the branch's arithmetic in float as
    before. A ``MatMul`` reading a Cast's output is no constant-weight MatMul, so the quantizer that
    follows leaves the branch alone. The other weights are copied tensor by tensor into ``target``'s data file.

    Returns:
        The number of LoRA matrices stored in FP16.

    Raises:
        ValueError: the graph holds no LoRA matrices (it was not built with ``adapter_path``).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source), load_external_data=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = WeightStore(source.parent, target.parent / f"{target.name}.data")
    casts = []
    try:
        for init in model.graph.initializer:
            if is_lora_weight(init.name):
                half = weights.read(init).astype(np.float16)
                name = init.name
                init.CopyFrom(weights.write(name + FP16_SUFFIX, half))
                casts.append(helper.make_node("Cast", [init.name], [name], name=f"{name}/Cast", to=TensorProto.FLOAT))
                continue
            nbytes = int(np.prod(init.dims)) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
            (weights.inline if nbytes < INLINE_BYTES else weights.store)(init)
    finally:
        weights.close()
    if not casts:
        raise ValueError(f"{source} holds no LoRA matrices: build it with the adapter (adapter_path)")
    for position, cast in enumerate(casts):  # first: the graph's nodes stay in topological order
        model.graph.node.insert(position, cast)
    onnx.save(model, str(target))
    return len(casts)


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
    job = codec.load(LoraJob, payload)
    return codec.dump(LoraKept(keep_lora_apart(Path(job.source), Path(job.target), Path(job.adapter_file))))


def _lora_fp16_task(payload: dict, _emit) -> dict:
    """Worker task: :func:`lora_in_fp16` from a :class:`LoraJob`'s source to its target (no adapter file)."""
    job = codec.load(LoraJob, payload)
    return {"lora_matrices": lora_in_fp16(Path(job.source), Path(job.target))}


if __name__ == "__main__":
    workers.serve({"keep-lora-apart": _keep_lora_apart_task, "lora-fp16": _lora_fp16_task})
