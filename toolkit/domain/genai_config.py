"""A converted model's ``genai_config.json``: its shape, and the context it claims against the positions built.

Every reader of the file (registration, doctor, the runtime wrapper) checks it here first
(:func:`config_problem`), so a field of the wrong type is one line naming it, never a
``TypeError`` deep inside (found by the property test in ``tests/test_fuzz.py``).

``genai_config.json``'s ``model.context_length`` is what Foundry Local and ONNX Runtime GenAI
believe; nothing stops an edit (or another tool's build) from raising it past what the model can
take. The graph's rotary tables (``cos_cache``/``sin_cache``, one row per position, built from the
source's ``max_position_embeddings``) are the runtime's own limit: a prompt past them fails inside
ONNX Runtime with an index error. The source model's ``config.json`` (the manifest's
``source_path``, while it is there) says what the model was trained for.
"""

from __future__ import annotations

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


def graph_positions(model_file: Path) -> int:
    """Rows of the graph's rotary table (``cos_cache``; the largest, for a long-context model's pair), 0 if none.

    Read from the graph alone (no tensor data).
    """
    import onnx

    try:
        graph = onnx.load(str(model_file), load_external_data=False).graph
    except Exception:  # noqa: BLE001 (an unreadable graph is doctor's "model files" check to report)
        return 0
    return max((int(init.dims[0]) for init in graph.initializer if "cos_cache" in init.name and init.dims), default=0)


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


def positions(folder: Path, genai_config: dict) -> Positions:
    """The most positions the model in ``folder`` takes: the graph's rotary table, else its source's config.

    Args:
        folder: A converted (or registered) model folder.
        genai_config: Its parsed ``genai_config.json`` (names the graph file).
    """
    decoder = (genai_config.get("model") or {}).get("decoder") or {}
    filename = decoder.get("filename", "model.onnx") if isinstance(decoder, dict) else "model.onnx"
    built = graph_positions(folder / str(filename)) if (folder / str(filename)).is_file() else 0
    if built:
        return Positions(built, f"the rotary table in {filename}, built from the model's max_position_embeddings")
    trained = source_positions(folder)
    if trained:
        return Positions(trained, "the source model's max_position_embeddings")
    return Positions(0, "")


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


def context_problem(folder: Path, genai_config: dict) -> str:
    """Why ``genai_config.json``'s ``context_length`` cannot be used (``""`` when it can), fix included."""
    context = (genai_config.get("model") or {}).get("context_length")
    if context is None:
        return ""  # the runtime's own default applies
    if type(context) is not int or context < 1:
        return (f"genai_config.json's model.context_length is {context!r}, not a positive whole number: "
                "set it to the model's max_position_embeddings (or convert again)")
    known = positions(folder, genai_config)
    if known.limit and context > known.limit:
        return (f"genai_config.json says model.context_length {context}, but the model takes {known.limit} positions "
                f"({known.source}): a longer prompt would fail inside ONNX Runtime; set context_length to "
                f"{known.limit} in genai_config.json (or convert again)")
    return ""
