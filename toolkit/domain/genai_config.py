"""A converted model's ``genai_config.json``: its shape, and the context it claims against the positions built.

Every reader of the file (registration, doctor, the runtime wrapper) checks it here first
(:func:`config_problem`), so a field of the wrong type is one line naming it, never a
``TypeError`` deep inside (found by the property test in ``tests/test_fuzz.py``).

``genai_config.json``'s ``model.context_length`` is what Foundry Local and ONNX Runtime GenAI
believe; nothing stops an edit (or another tool's build) from raising it past what the model can
take. The graph's rotary tables (``cos_cache``/``sin_cache``, one row per position, built from the
source's ``max_position_embeddings``) are the runtime's own limit: a prompt past them fails inside
ONNX Runtime with an index error. The source model's ``config.json`` (the manifest's
``source_path``, while it is there) says what the model was trained for. The graph's limit is
read by :mod:`slmops.toolkit.weights.context_limit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts


@dataclass(frozen=True)
class Positions:
    """The most positions a converted model takes, and where that was read.

    Attributes:
        limit: Tokens (prompt plus answer); 0 when neither the graph nor the source says.
        source: Where it was read, in words (for messages).
    """

    limit: int
    source: str


def source_positions(folder: Path) -> int:
    """``max_position_embeddings`` of the source model the folder's manifest names (0 when it is gone or silent)."""
    source = artifacts.read_json(folder / artifacts.MANIFEST, {})
    path = source.get("source_path") if isinstance(source, dict) else None
    if not isinstance(path, str) or not path:
        return 0
    try:
        config = artifacts.read_json(Path(path) / "config.json", {})
    except Exception:  # noqa: BLE001 (the source may have moved or changed: the graph still answers)
        return 0
    if not isinstance(config, dict):
        return 0
    fields = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = fields.get("max_position_embeddings") if isinstance(fields, dict) else None
    return value if type(value) is int and value > 0 else 0


def config_problem(genai_config: object) -> str:
    """Why a parsed ``genai_config.json`` is not one ONNX Runtime GenAI can load (``""`` when its shape is right).

    Checked: ``model`` and ``model.decoder`` are objects, ``decoder.filename`` a file name in the
    folder, ``model.eos_token_id`` an id or a list of ids, ``search`` an object. The message names
    the field; the fix (convert again) is the caller's to add.
    """
    if not isinstance(genai_config, dict):
        return "genai_config.json is not a JSON object"
    model = genai_config.get("model")
    if not isinstance(model, dict):
        return "genai_config.json's model is not an object"
    decoder = model.get("decoder")
    if not isinstance(decoder, dict):
        return "genai_config.json has no model.decoder section (an object)"
    filename = decoder.get("filename", "model.onnx")
    if not isinstance(filename, str) or not filename or Path(filename).name != filename or filename in (".", ".."):
        return f"genai_config.json's model.decoder.filename is {filename!r}, not a file name in the model's folder"
    eos = model.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and not all(type(i) is int and i >= 0 for i in ids):
        return f"genai_config.json's model.eos_token_id is {eos!r}, not a token id or a list of them"
    for section in ("search", "model.decoder.session_options"):
        node = genai_config.get("search") if section == "search" else decoder.get("session_options")
        if node is not None and not isinstance(node, dict):
            return f"genai_config.json's {section} is not an object"
    return ""


def decoder_config(model_dir: Path) -> dict:
    """``model.decoder`` of the folder's ``genai_config.json`` (empty when the file or the section is missing)."""
    try:
        return json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    except (OSError, KeyError, ValueError):
        return {}
