"""A model folder as the pinned ONNX Runtime GenAI loads it, whatever newer release wrote its ``genai_config.json``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

#: ``genai_config.json`` model keys newer ONNX Runtime GenAI releases read (Foundry Local's 0.18: the
#: tool-call and reasoning boundary token ids) that the pinned 0.14.1's parser refuses as unknown.
NEWER_MODEL_KEYS = ("bot_token_id", "eot_token_id", "bor_token_id", "eor_token_id")


def readable_dir(model_dir: str | os.PathLike[str]) -> Path:
    """``model_dir``, or when its ``genai_config.json`` has :data:`NEWER_MODEL_KEYS`, a folder this package can load.

    That folder (under the system's temporary folder, kept by the config's path and content) links
    every file of ``model_dir`` except ``genai_config.json``, written without those keys: the
    same weights, graph, tokenizer and settings.
    """
    import hashlib
    import tempfile

    folder = Path(model_dir)
    try:
        text = (folder / "genai_config.json").read_text(encoding="utf-8")
        config = json.loads(text)
    except (OSError, ValueError):
        return folder
    model = config.get("model") or {}
    if not any(key in model for key in NEWER_MODEL_KEYS):
        return folder
    for key in NEWER_MODEL_KEYS:
        model.pop(key, None)
    digest = hashlib.sha256(f"{folder.resolve()}\n{text}".encode()).hexdigest()[:16]
    shadow = Path(tempfile.gettempdir()) / "slmops-genai-compat" / digest
    if not (shadow / "genai_config.json").is_file():
        _prune_shadows(shadow.parent)
        staging = shadow.with_name(f".{digest}.{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            if item.name != "genai_config.json" and not (staging / item.name).exists():
                (staging / item.name).symlink_to(item.resolve())
        (staging / "genai_config.json").write_text(json.dumps(config, indent=2))
        try:
            staging.rename(shadow)
        except OSError:  # another process made it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return shadow


def _prune_shadows(root: Path) -> None:
    """Remove the :func:`readable_dir` folders whose model folder is gone, and scratch of dead processes."""

    import psutil

    if not root.is_dir():
        return
    for shadow in root.iterdir():
        if shadow.name.startswith("."):  # .DIGEST.PID: a copy being made, or left by a process that died
            pid = shadow.name.rsplit(".", 1)[-1]
            gone = not (pid.isdigit() and psutil.pid_exists(int(pid)))
        else:
            try:
                gone = any(link.is_symlink() and not link.exists() for link in shadow.iterdir())
            except OSError:  # another process pruned it first
                continue
        if gone:
            shutil.rmtree(shadow, ignore_errors=True)


def load(model_dir: str | os.PathLike[str], threads: int = 0):
    """An ``og.Model`` for ``model_dir``; ``threads`` > 0 fixes the session's intra-op threads (files untouched)."""
    import onnxruntime_genai as og

    config = og.Config(str(readable_dir(model_dir)))
    if threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def single_graph_overlay(folder: Path, filename: str) -> str:
    """An ``og.Config.overlay`` loading ``folder``'s ``filename`` as its one decoder graph.

    A registered folder may be a ``decoder-pipeline`` (a prompt graph and a token graph, both on
    the last position only); the model type only picks ONNX Runtime GenAI's decoder class, the same
    for every decoder-only model, so such a folder's full graph is loaded as ``llama``.
    """
    config = json.loads((folder / "genai_config.json").read_text())
    overlay: dict = {"model": {"decoder": {"filename": filename}}}
    if config["model"].get("type") == "decoder-pipeline":
        overlay["model"]["type"] = "llama"
    return json.dumps(overlay)
