"""Source checkpoints read and checked: a Hugging Face folder's config and weights' headers.

Safetensors headers are read as JSON (:func:`slmops.toolkit.domain.sources.safetensors_tensors`);
a ``pytorch_model*.bin`` checkpoint is opened by torch weights-only on the meta device; an
architecture's default ``tie_word_embeddings`` comes from transformers' config class. The
checks themselves are the domain's (:mod:`slmops.toolkit.domain.sources`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import ModelFolderError
from slmops.toolkit.domain.source_checks import check_consistency, check_dtype, check_fields, check_quantization
from slmops.toolkit.domain.sources import (
    SourceModel,
    TensorInfo,
    safetensors_tensors,
    stores_lm_head,
    text_config,
    weight_files,
)


def _model_config(folder: Path) -> dict:
    """The folder's ``config.json``, refused when the folder or the file is missing or not a JSON object."""
    if not folder.is_dir():
        raise ModelFolderError(folder, "a file, not a model folder" if folder.exists() else "no such folder",
                               "Point at the folder that holds config.json, or use `slmops bundled`.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            folder, "no config.json, so this is not a Hugging Face model folder",
            "Point at the folder that `save_pretrained` wrote.",
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(folder, f"config.json is not valid UTF-8 JSON ({exc})", "Re-save the model.") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(folder, "config.json is not a JSON object", "Re-save the model.")
    return config


def inspect_source(path: str | os.PathLike[str]) -> SourceModel:
    """Check that ``path`` is a Hugging Face model folder this toolkit can convert, and describe it.

    Everything is read from ``config.json`` and the weights' headers (a ``pytorch_model*.bin``
    checkpoint is opened weights-only, memory-mapped onto the meta device: no tensor data is
    read and no pickled code runs), before anything is written. An already-quantized
    checkpoint is refused naming the 16-bit model to convert instead, and so is a
    ``config.json`` that contradicts the weights (see :func:`check_consistency`).

    Raises:
        ModelFolderError: the folder is missing or lacks config, weights or tokenizer, or a
            weight file is unreadable (or a ``.bin`` holds more than plain weights).
        QuantizedCheckpointError: the checkpoint is already quantized (bitsandbytes, GPTQ, AWQ, ...).
        InconsistentCheckpointError: ``config.json`` contradicts the weights.

    Example:
        >>> inspect_source(bundled_model()).model_type
        'llama'
    """
    folder = Path(path).expanduser()
    config = _model_config(folder)
    check_fields(folder, config)
    files = weight_files(folder)
    if not files:
        raise ModelFolderError(folder, "no weights (*.safetensors or pytorch_model*.bin)",
                               "Re-save the model with its weights.")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        raise ModelFolderError(folder, "no tokenizer (tokenizer.json)", "Save the tokenizer next to the model.")
    artifacts.check_no_links_leaving(folder)
    tensors = read_tensors(folder, files)
    check_quantization(folder, config, tensors)
    check_consistency(folder, config, tensors, default_tie_word_embeddings)
    check_dtype(folder, config, tensors)
    architectures = config.get("architectures") or ["unknown"]
    sizes = [math.prod(info.shape) for info in tensors.values()]
    return SourceModel(
        path=folder.resolve(),
        architecture=architectures[0],
        model_type=str(config.get("model_type", "unknown")),
        context_length=int(config.get("max_position_embeddings") or config.get("n_positions") or 0),
        hidden_size=int(config.get("hidden_size") or 0),
        tied_embeddings=(config["tie_word_embeddings"] if isinstance(config.get("tie_word_embeddings"), bool)
                         else not stores_lm_head(tensors)),
        parameters=sum(sizes),
        largest_tensor=max(sizes, default=0),
        checkpoint_bytes=sum(file.stat().st_size for file in files),
    )


def read_tensors(folder: str | os.PathLike[str], files: list[Path] | None = None) -> dict[str, TensorInfo]:
    """Every stored tensor's name, dtype and shape, from the weight files' headers (no tensor data is read).

    Args:
        folder: A Hugging Face model folder.
        files: Its weight files (default: :func:`weight_files`).

    Raises:
        ModelFolderError: a file is empty, truncated or not safetensors, or a ``.bin`` file
            is not a plain weights-only state dict.
    """
    tensors: dict[str, TensorInfo] = {}
    for file in weight_files(folder) if files is None else files:
        tensors.update(_bin_tensors(file) if file.suffix == ".bin" else safetensors_tensors(file))
    return tensors


def _bin_tensors(file: Path) -> dict[str, TensorInfo]:
    """A ``pytorch_model*.bin`` file's tensors: loaded weights-only onto the meta device (no data, no code runs).

    Raises:
        ModelFolderError: the file is not a torch checkpoint, holds more than tensors (a
            weights-only load refuses arbitrary pickled objects), or is not a state dict.
    """
    import pickle

    import torch

    fix = ("Re-save it as safetensors from a copy you trust: AutoModelForCausalLM.from_pretrained(DIR)"
           ".save_pretrained(NEW_DIR).")
    try:
        try:
            state = torch.load(file, map_location="meta", weights_only=True, mmap=True)
        except RuntimeError as exc:  # an old (pre-zip) torch.save format cannot be memory-mapped
            if "mmap" not in str(exc) and "zipfile" not in str(exc):
                raise
            state = torch.load(file, map_location="meta", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        problem = " ".join(str(exc).split())[:160]
        raise ModelFolderError(file.parent, f"{file.name} cannot be read as plain weights ({type(exc).__name__}: "
                               f"{problem})", fix) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFolderError(file.parent, f"{file.name} is not a state dict of tensors", fix)
    return {str(name): TensorInfo(_DTYPE_NAMES.get(str(t.dtype), str(t.dtype).removeprefix("torch.")),
                                  tuple(t.shape)) for name, t in state.items()}


#: torch dtypes by safetensors' names for them.
_DTYPE_NAMES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
                "torch.int8": "I8", "torch.uint8": "U8", "torch.int16": "I16", "torch.int32": "I32",
                "torch.int64": "I64", "torch.bool": "BOOL", "torch.float8_e4m3fn": "F8_E4M3",
                "torch.float8_e5m2": "F8_E5M2"}


def tied_flag_contradicts_head(folder: str | os.PathLike[str]) -> str:
    """Whether ``config.json`` says ``tie_word_embeddings: true`` while the weights store an LM head of their own
    that differs from the embedding table (public report LlamaFactory#10560).

    transformers 5 does not tie two stored tensors that differ (it warns, and keeps the stored
    ``lm_head.weight``); the ONNX Runtime GenAI builder follows the flag and uses the embedding
    table as the head, and builds another model. A stored head equal to the table (a trainer that
    saved both) is fine.
    Reads the two tensors only, and only when the flag is true and a head is stored.

    Returns:
        The stored head's tensor name when it differs from the table, else ``""``.
    """
    folder = Path(folder)
    config = artifacts.read_json(folder / "config.json", {})
    fields = text_config(config) if isinstance(config, dict) else {}
    if fields.get("tie_word_embeddings") is not True:
        return ""
    files = weight_files(folder)
    tensors = read_tensors(folder, files)
    heads = [name for name in tensors if stores_lm_head([name])]
    tables = sorted((name for name in tensors if name.endswith("embed_tokens.weight")), key=lambda n: n.count("."))
    if not heads or not tables or tensors[heads[0]].shape != tensors[tables[0]].shape:
        return heads[0] if heads and tables else ""
    import torch

    loaded = {}
    for file in files:
        wanted = [name for name in (heads[0], tables[0]) if name not in loaded]
        if not wanted:
            break
        if file.suffix == ".bin":
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            loaded |= {name: state[name] for name in wanted if name in state}
        else:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                loaded |= {name: handle.get_tensor(name) for name in wanted if name in handle.keys()}  # noqa: SIM118
    if len(loaded) < 2:
        return ""
    return "" if torch.equal(loaded[heads[0]], loaded[tables[0]]) else heads[0]


def default_tie_word_embeddings(fields: dict) -> bool | None:
    """What transformers' config class for ``fields["model_type"]`` sets ``tie_word_embeddings`` to when it is left out."""
    try:
        from transformers import AutoConfig

        return bool(AutoConfig.for_model(str(fields.get("model_type"))).tie_word_embeddings)
    except (ValueError, KeyError, AttributeError, TypeError, ImportError):
        return None
