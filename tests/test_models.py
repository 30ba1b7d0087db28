"""Source models: the tiny random model and the bundled model's completeness check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.core.errors import ModelFolderError
from toolkit.domain import sources as M


def test_tiny_model_is_a_complete_hf_folder(tiny_model: Path) -> None:
    source = M.inspect_source(tiny_model)
    assert source.architecture == "Qwen2ForCausalLM" and source.context_length == 512
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] % 16 == 0  # ORT attention needs this


def test_tiny_llama_builds(tmp_path: Path) -> None:
    assert M.inspect_source(M.make_tiny_model(tmp_path / "llama", model_type="llama")).model_type == "llama"
    with pytest.raises(ValueError, match="model_type"):
        M.make_tiny_model(tmp_path / "gpt", model_type="gpt2")


def test_completeness_marker_detects_missing_and_truncated_files(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "config.json").write_text("{}")
    assert not M._is_complete(folder)  # no marker: an interrupted build
    M._write_marker(folder)
    assert M._is_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)
    assert not M._is_complete(folder)  # truncated: rebuilt on next use
    (folder / "model.safetensors").unlink()
    assert not M._is_complete(folder)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    first = M.fingerprint(tmp_path)
    (tmp_path / "a").write_text("2")
    assert M.fingerprint(tmp_path) != first


def test_missing_bundled_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLMOPS_SMOLLM2_GGUF", str(tmp_path / "none.gguf"))
    monkeypatch.setattr(M.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFolderError, match="make setup"):
        M.bundled_gguf()
