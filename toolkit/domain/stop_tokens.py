"""The end-of-sequence ids a source model's generation stops on, resolved before any conversion work.

ONNX Runtime GenAI reads ``model.eos_token_id`` from ``genai_config.json`` and refuses the file when
it is ``null``; the model builder copies it from ``config.json`` (overridden by
``generation_config.json``) and writes ``null`` when neither names one, as a config made in code
with transformers 5 (``Qwen2Config(...)``, which leaves it unset) or trimmed by a tool often does.
Transformers' ``generate`` reads the same two files; a tokenizer's own ``eos_token`` is where a
model's end of sequence is named when both are silent (``PreTrainedTokenizer.eos_token_id``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import ModelFolderError

CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


@dataclass(frozen=True)
class StopTokens:
    """Where a model's end-of-sequence ids were found.

    Attributes:
        ids: The token ids, in the order found (never empty).
        source: The file that named them (``generation_config.json``, ``config.json`` or
            ``tokenizer_config.json``).
    """

    ids: tuple[int, ...]
    source: str

    @property
    def genai_value(self) -> int | list[int]:
        """The ids as ``genai_config.json`` writes them: a number for one, a list for several."""
        return self.ids[0] if len(self.ids) == 1 else list(self.ids)


def as_ids(value: object) -> tuple[int, ...]:
    """An ``eos_token_id`` field (an int, a list of ints, ``null`` or missing) as a tuple of ids.

    Example:
        >>> as_ids([2, 32000]), as_ids(7), as_ids(None)
        ((2, 32000), (7,), ())
    """
    items = value if isinstance(value, list) else [value]
    return tuple(int(item) for item in items if isinstance(item, int) and not isinstance(item, bool) and item >= 0)


def _read_object(file: Path) -> dict:
    """A JSON object file's content; ``{}`` when the file is absent or not a readable JSON object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _config_ids(config: dict) -> tuple[int, ...]:
    """``eos_token_id`` of a config, or of its ``text_config`` (multimodal configs nest the language model's)."""
    text = config.get("text_config")
    return as_ids(config.get("eos_token_id")) or (as_ids(text.get("eos_token_id")) if isinstance(text, dict) else ())


def _tokenizer_eos(folder: Path) -> tuple[int, ...]:
    """The id of ``tokenizer_config.json``'s ``eos_token`` in the folder's ``tokenizer.json``, if both exist."""
    eos = _read_object(folder / TOKENIZER_CONFIG).get("eos_token")
    text = eos.get("content") if isinstance(eos, dict) else eos
    if not isinstance(text, str) or not text:
        return ()
    tokenizer = _read_object(folder / TOKENIZER)
    for token in tokenizer.get("added_tokens") or []:
        if isinstance(token, dict) and token.get("content") == text and isinstance(token.get("id"), int):
            return (token["id"],)
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and isinstance(vocab.get(text), int):
        return (vocab[text],)
    return ()


def resolve(folder: str | os.PathLike[str]) -> StopTokens | None:
    """The ids a model in ``folder`` stops on: ``generation_config.json``, then ``config.json``, then the tokenizer.

    ``generation_config.json`` wins where it names any (transformers' ``generate`` and the model
    builder both read it over the config); a tokenizer's ``eos_token`` is looked up in
    ``tokenizer.json`` (its added tokens, then its vocabulary).

    Returns:
        The ids and the file that named them, or None when no file names one.

    Example:
        >>> resolve(bundled_model()).ids
        (2,)
    """
    folder = Path(folder)
    for name, ids in ((GENERATION_CONFIG, _config_ids(_read_object(folder / GENERATION_CONFIG))),
                      (CONFIG, _config_ids(_read_object(folder / CONFIG))),
                      (TOKENIZER_CONFIG, _tokenizer_eos(folder))):
        if ids:
            return StopTokens(ids, name)
    return None


def require(folder: str | os.PathLike[str]) -> StopTokens:
    """:func:`resolve`, refusing a model that names no end-of-sequence token anywhere.

    Raises:
        ModelFolderError: neither ``config.json``, ``generation_config.json`` nor the tokenizer names one.
    """
    found = resolve(folder)
    if found is None:
        raise ModelFolderError(
            folder, "no end-of-sequence token: config.json and generation_config.json have no eos_token_id and "
            "the tokenizer names no eos_token, so generation could never stop",
            "Set eos_token_id in config.json to the id of the token that ends an answer (or save the tokenizer "
            "with its eos_token).")
    return found


#: The special token ids a config names; each indexes the embedding table (a pad id past it fails the builder).
SPECIAL_IDS = ("eos_token_id", "bos_token_id", "pad_token_id", "decoder_start_token_id")


def check_files(folder: str | os.PathLike[str]) -> None:
    """Refuse a ``generation_config.json`` that is not a JSON object (checked before any work).

    Transformers' ``generate`` and the model builder read it; the builder failed on one that is a list
    (``TypeError: 'list' object is not a mapping``) after loading the model, and an unreadable one was
    silently skipped here, so the stop tokens came from elsewhere.

    Raises:
        ModelFolderError: the file is there but not a readable JSON object.
    """
    file = Path(folder) / GENERATION_CONFIG
    if not file.is_file():
        return
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFolderError(folder, f"{GENERATION_CONFIG} is not valid JSON ({exc})",
                               f"Fix {GENERATION_CONFIG} or delete it (its stop tokens and sampling settings are "
                               "read at conversion).") from exc
    if not isinstance(data, dict):
        raise ModelFolderError(folder, f"{GENERATION_CONFIG} is a JSON {type(data).__name__}, not an object",
                               f"Save it with GenerationConfig.save_pretrained, or delete {GENERATION_CONFIG}.")


def check_ids_in_vocab(folder: str | os.PathLike[str], vocab: int) -> None:
    """Refuse special token ids (:data:`SPECIAL_IDS`) in ``config.json`` or ``generation_config.json`` past ``vocab``.

    An end-of-sequence id the model cannot produce never stops generation; a pad id past the table fails the
    builder (``Padding_idx must be within num_embeddings``); a string id fails its config parsing.

    Args:
        folder: The model folder.
        vocab: Rows of the embedding table (ids ``0 .. vocab - 1`` exist).

    Raises:
        ModelFolderError: an id that is not a token id, or past the table (the message names the file and field).
    """
    folder = Path(folder)
    for name in (GENERATION_CONFIG, CONFIG):
        data = _read_object(folder / name)
        for where, fields in (("", data), ("text_config.", data.get("text_config"))):
            if not isinstance(fields, dict):
                continue
            for key in SPECIAL_IDS:
                value = fields.get(key)
                items = value if isinstance(value, list) else [value]
                bad = [item for item in items if item is not None and (type(item) is not int or item >= vocab)]
                if bad:
                    raise ModelFolderError(
                        folder, f"{name}'s {where}{key} is {value!r}, but token ids are whole numbers below {vocab} "
                        f"(the embedding table's rows)",
                        f"Set {key} in {name} to the id of that token in the tokenizer.")


def complete_genai_config(folder: str | os.PathLike[str], stop: StopTokens) -> bool:
    """Fill ``genai_config.json``'s missing or ``null`` ``eos_token_id`` (and ``pad_token_id``) from ``stop``.

    Returns:
        Whether the file was changed.
    """
    file = Path(folder) / "genai_config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    model = config.get("model")
    if not isinstance(model, dict) or as_ids(model.get("eos_token_id")):
        return False
    model["eos_token_id"] = stop.genai_value
    if not as_ids(model.get("pad_token_id")):
        model["pad_token_id"] = stop.ids[0]
    file.write_text(json.dumps(config, indent=4), encoding="utf-8")
    return True
