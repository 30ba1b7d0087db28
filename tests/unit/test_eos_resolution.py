"""A model's end-of-sequence ids are resolved before conversion, as transformers resolves them.

A config made in code with transformers 5 (``Qwen2Config(...)``) has no ``eos_token_id``; the model
builder wrote ``null`` into ``genai_config.json``, which ONNX Runtime GenAI refuses, and the
conversion failed after the whole build, blamed on the parity check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import ModelFolderError
from slmops.toolkit.domain import stop_tokens


def _write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


def test_generation_config_then_config_then_tokenizer(tmp_path: Path) -> None:
    _write(tmp_path, "config.json", {"eos_token_id": 5})
    _write(tmp_path, "generation_config.json", {"eos_token_id": [7, 8]})
    _write(tmp_path, "tokenizer_config.json", {"eos_token": "<end>"})
    _write(tmp_path, "tokenizer.json", {"added_tokens": [{"id": 9, "content": "<end>"}], "model": {"vocab": {}}})
    assert stop_tokens.resolve(tmp_path) == stop_tokens.StopTokens((7, 8), "generation_config.json")
    _write(tmp_path, "generation_config.json", {"eos_token_id": None})
    assert stop_tokens.resolve(tmp_path) == stop_tokens.StopTokens((5,), "config.json")
    _write(tmp_path, "config.json", {"text_config": {"eos_token_id": 6}})
    assert stop_tokens.resolve(tmp_path).ids == (6,)  # a multimodal config nests the language model's
    _write(tmp_path, "config.json", {"eos_token_id": None})
    assert stop_tokens.resolve(tmp_path) == stop_tokens.StopTokens((9,), "tokenizer_config.json")
    _write(tmp_path, "tokenizer_config.json", {"eos_token": {"content": "</s>"}})
    _write(tmp_path, "tokenizer.json", {"added_tokens": [], "model": {"vocab": {"</s>": 3}}})
    assert stop_tokens.resolve(tmp_path).ids == (3,)  # an AddedToken dict, found in the vocabulary
    _write(tmp_path, "tokenizer_config.json", {"eos_token": None})
    assert stop_tokens.resolve(tmp_path) is None
    with pytest.raises(ModelFolderError, match=r"no end-of-sequence token.*Set eos_token_id in config\.json"):
        stop_tokens.require(tmp_path)


def test_a_null_eos_in_genai_config_is_filled_and_a_set_one_kept(tmp_path: Path) -> None:
    _write(tmp_path, "genai_config.json", {"model": {"eos_token_id": None, "pad_token_id": None}})
    assert stop_tokens.complete_genai_config(tmp_path, stop_tokens.StopTokens((4, 6), "config.json"))
    model = json.loads((tmp_path / "genai_config.json").read_text())["model"]
    assert (model["eos_token_id"], model["pad_token_id"]) == ([4, 6], 4)
    assert not stop_tokens.complete_genai_config(tmp_path, stop_tokens.StopTokens((1,), "config.json"))
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["eos_token_id"] == [4, 6]


