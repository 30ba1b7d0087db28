"""LoRA adapters as inputs of one loaded base: the base graph's LoRA inputs and an ``.onnx_adapter`` file's values.

A build whose LoRA was kept apart (``slmops convert ADAPTER --keep-adapter``) has one graph input per LoRA
matrix (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``), each defaulting to an empty matrix of rank 0
(the base alone), and one ``.onnx_adapter`` file per fine-tune holding those inputs' values. ONNX Runtime's
own reader (``onnxruntime.AdapterFormat``) loads a file's matrices once as ``OrtValue`` s; the batch engine
binds them beside its own inputs on every run of that adapter's sequences
(:attr:`~slmops.toolkit.runtimes.batching.BatchEngine.adapters`), so one loaded session serves every adapter
and switching costs nothing. ``RunOptions.add_active_adapter`` does the same for ``InferenceSession.run`` but
not for runs with an I/O binding, which the engine's cache needs (ONNX Runtime 1.31 warns that it has no effect
there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.weights.lora_apart import LORA_RANK_DIM

_ITEM_BYTES = {"tensor(float)": 4, "tensor(float16)": 2}

#: The fix named when a model has no LoRA inputs.
KEEP_ADAPTER_FIX = ("build the base with `slmops convert ADAPTER --keep-adapter [--also-adapter OTHER]`, register "
                    "that build and serve it with the adapter files it wrote (its adapters/ folder)")


@dataclass(frozen=True)
class LoraInput:
    """One LoRA input of a base graph: its shape, the rank's axis symbolic (``lora_r.<module>``)."""

    name: str
    shape: tuple[int | str, ...]

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a matrix of ``shape`` fits (same rank of array, same sizes but the rank's)."""
        return len(shape) == len(self.shape) and all(
            isinstance(size, str) or size == got for size, got in zip(self.shape, shape, strict=True))


def lora_inputs(graph: Path) -> dict[str, LoraInput]:
    """The LoRA inputs of the ONNX graph ``graph`` by name (none: a build without LoRA inputs)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    found = {}
    for value in model.graph.input:
        dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim)
        if any(isinstance(d, str) and d.startswith(f"{LORA_RANK_DIM}.") for d in dims):
            found[value.name] = LoraInput(value.name, dims)
    return found


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter file's matrices, loaded once (``values``: input name to ``OrtValue``).

    Attributes:
        file: The ``.onnx_adapter`` file.
        values: Its matrices by graph input name.
        nbytes: Their bytes.
        source: ONNX Runtime's reader, which owns the values' memory.
    """

    file: Path
    values: dict[str, object]
    nbytes: int
    source: object


def load_adapter(file: Path, inputs: dict[str, LoraInput], model: str) -> AdapterWeights:
    """Read the adapter file ``file`` and check that every matrix is a LoRA input of the base ``model``.

    Args:
        file: An ``.onnx_adapter`` file.
        inputs: The base graph's LoRA inputs (:func:`lora_inputs`).
        model: The base's name, for the messages.

    Raises:
        InputError: no such file, not an adapter file, or a matrix the base has no input of its size for.
    """
    import onnxruntime as ort

    if not file.is_file():
        raise InputError(f"--adapter: {file} is not a file: give the .onnx_adapter file that "
                         "`slmops convert ADAPTER --keep-adapter` wrote in the build's adapters/ folder.")
    if not inputs:
        raise InputError(f"--adapter: {model!r} was built without LoRA inputs, so no adapter can apply to it: "
                         f"{KEEP_ADAPTER_FIX}.")
    try:
        source = ort.AdapterFormat.read_adapter(str(file))
        values = dict(source.get_parameters())
    except Exception as exc:  # ONNX Runtime's own message names what it could not read
        raise InputError(f"--adapter: {file} is not an ONNX Runtime adapter file ({str(exc).strip()[:120]}): give "
                         "the .onnx_adapter file that `slmops convert ADAPTER --keep-adapter` wrote.") from exc
    if not values:
        raise InputError(f"--adapter: {file} holds no matrices: give the .onnx_adapter file that "
                         "`slmops convert ADAPTER --keep-adapter` wrote.")
    nbytes = 0
    for name, value in values.items():
        shape = tuple(value.shape())
        wanted = inputs.get(name)
        if wanted is None or not wanted.fits(shape):
            raise InputError(f"--adapter: {file} is not an adapter of {model!r} ({name} {list(shape)} is none of its "
                             "LoRA inputs): serve it over the build `slmops convert --keep-adapter` made it with, "
                             "or convert that fine-tune with --also-adapter beside this base's own.")
        nbytes += int(np.prod(shape)) * _ITEM_BYTES.get(value.data_type(), 4)
    return AdapterWeights(file, values, nbytes, source)
