"""The most positions a converted model takes: its graph's rotary table, else its source's config.

The graph is read without its tensor data (onnx); the source's ``max_position_embeddings``
and the ``genai_config.json`` shape checks are the domain's (:mod:`slmops.toolkit.domain.genai_config`).
"""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.domain.genai_config import Positions, source_positions


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
