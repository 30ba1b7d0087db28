"""Source models: the tiny random model and the bundled model's completeness check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import ModelFolderError
from slmops.toolkit.domain import sources
from slmops.toolkit.weights import bundled, checkpoints
from tests.models import make_shaped_model, make_tiny_model


def test_tiny_model_is_a_complete_hf_folder(tiny_model: Path) -> None:
    source = checkpoints.inspect_source(tiny_model)
    assert source.architecture == "Qwen2ForCausalLM" and source.context_length == 512
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["hidden_size"] // config["num_attention_heads"] % 16 == 0  # ORT attention needs this


def test_tiny_llama_builds(tmp_path: Path) -> None:
    assert checkpoints.inspect_source(make_tiny_model(tmp_path / "llama", model_type="llama")).model_type == "llama"
    with pytest.raises(ValueError, match="model_type"):
        make_tiny_model(tmp_path / "gpt", model_type="gpt2")


def test_completeness_marker_detects_missing_and_truncated_files(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    (folder / "config.json").write_text("{}")
    assert not bundled._is_complete(folder)  # no marker: an interrupted build
    bundled._write_marker(folder)
    assert bundled._is_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)
    assert not bundled._is_complete(folder)  # truncated: rebuilt on next use
    (folder / "model.safetensors").unlink()
    assert not bundled._is_complete(folder)


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    first = sources.fingerprint(tmp_path)
    (tmp_path / "a").write_text("2")
    assert sources.fingerprint(tmp_path) != first


def test_missing_bundled_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLMOPS_SMOLLM2_GGUF", str(tmp_path / "none.gguf"))
    monkeypatch.setattr(bundled.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFolderError, match="make setup"):
        bundled.bundled_gguf()


def test_a_real_shape_is_written_shard_by_shard_and_loads(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from slmops.toolkit.domain import memory
    from slmops.toolkit.domain.options import Method, Precision

    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "vocab_size": 5000, "tie_word_embeddings": False}
    folder = make_shaped_model(tmp_path / "m", config, shard_mb=1)  # 1 MB shards: several files and an index
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    source = checkpoints.inspect_source(folder)
    assert source.largest_tensor == 5000 * 64  # the embedding table (and the LM head)
    assert source.checkpoint_bytes == sum(f.stat().st_size for f in shards)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == 5000 and model.lm_head.weight.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == source.parameters
    assert float(model.model.norm.weight.detach().float().mean()) == 1.0  # norms start at one, like a real init
    # A bigger vocabulary is predicted to need more: the largest tensor is in every step's peak.
    base = {"parameters": source.parameters, "checkpoint_bytes": source.checkpoint_bytes, "method": Method.BUILDER,
            "route_precision": Precision.FP32, "quantized": True}
    small, large = (memory.estimate(largest_tensor=n, **base) for n in (source.largest_tensor, 100 * 2**20))
    assert large.peak_mib > small.peak_mib
    olive = memory.estimate(largest_tensor=source.largest_tensor, **{**base, "method": Method.OLIVE,
                                                                       "route_precision": Precision.INT4,
                                                                       "quantized": False})
    assert olive.peak_step.startswith("export (olive: the builder's in-memory int4)")
