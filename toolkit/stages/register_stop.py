"""The stop tokens a registration writes: ``genai_config.json``'s EOS joined with the chat template's end of turn
and the source's generation settings."""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import (
    InputError,
)
from slmops.toolkit.domain import templates
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.results.registration import AddedStopToken, StopTokens
from slmops.toolkit.weights.turn_tokens import end_of_turn_tokens


def token_ids(value: object) -> list[int]:
    """An ``eos_token_id`` (an int, a list of them, or missing) as a list."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def reconcile_stop_tokens(onnx_dir: Path, genai_config: dict, template: templates.PromptTemplate) -> StopTokens:
    """The EOS ids generation must stop on: the converted model's, the template's end of turn, generation_config's.

    A model fine-tuned on ChatML often keeps ``<|endoftext|>`` as its only EOS while every turn it
    learned ends in ``<|im_end|>`` (Gemma: ``<eos>`` and ``<end_of_turn>``); without the end-of-turn
    id, generation runs to max tokens. ``generation_config.json`` is read from the converted folder,
    else from the folder it was converted from (``manifest.json``'s ``source_path``).

    Raises:
        InputError: a stop token is past the model's vocabulary (its tokenizer grew, the model was never resized).
    """
    before = token_ids(genai_config["model"].get("eos_token_id"))
    found: list[tuple[int, str, str]] = []
    tokenizer_file = onnx_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        found += [(i, tok, "the chat template's end of turn")
                  for i, tok in end_of_turn_tokens(template, tokenizer_file)]
    made = read_manifest(onnx_dir)
    source = made.source_path if made else ""
    generation_file = next((f for f in (onnx_dir / "generation_config.json",
                                        Path(source) / "generation_config.json" if source else None)
                            if f is not None and f.is_file()), None)
    if generation_file is not None:
        config = artifacts.read_json(generation_file, {})
        found += [(i, _token_text(tokenizer_file, i), "generation_config.json")
                  for i in token_ids(config.get("eos_token_id") if isinstance(config, dict) else None)]
    vocab = genai_config["model"].get("vocab_size")
    outside = [(i, tok, origin) for i, tok, origin in found if isinstance(vocab, int) and i >= vocab]
    if outside:
        token_id, token, origin = outside[0]
        raise InputError(vocabulary_gap(onnx_dir, token, token_id, vocab, origin))
    eos = list(before)
    added = []
    for token_id, token, origin in found:
        if token_id not in eos:
            eos.append(token_id)
            added.append(AddedStopToken(token_id, token, origin))
    return StopTokens(tuple(eos), tuple(before), tuple(added), str(generation_file or ""))


def vocabulary_gap(folder: Path, token: str, token_id: int, vocab: int, origin: str) -> str:
    """The one-line refusal of a stop token the model has no row for (its tokenizer grew, the model did not)."""
    return (f"{folder}: {token} ({origin}) is token {token_id}, past the model's {vocab}-token vocabulary: the "
            "tokenizer holds tokens the model was never resized for, so no answer could end there. Resize the model "
            "(model.resize_token_embeddings(len(tokenizer))), train or save it again and convert it again.")


def _token_text(tokenizer_file: Path, token_id: int) -> str:
    if not tokenizer_file.is_file():
        return str(token_id)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).id_to_token(token_id) or str(token_id)

