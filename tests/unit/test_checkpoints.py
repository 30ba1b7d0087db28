"""Checkpoint forms (issue 23, item 3): .bin models read weights-only, quantized checkpoints and configs that
contradict their weights refused in one line from the headers, before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InconsistentCheckpointError, ModelFolderError, QuantizedCheckpointError
from slmops.toolkit.weights import checkpoints
from tests.models import make_shaped_model, make_tiny_model


def as_bin(model: Path, target: Path, *, shards: int = 1) -> Path:
    """A copy of ``model`` whose weights are ``pytorch_model*.bin`` (torch.save of the state dict), as older
    trainers saved them (transformers 5's save_pretrained writes safetensors only)."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(model, target, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    state = {}
    for file in sorted(model.glob("*.safetensors")):
        state |= load_file(file)
    names = sorted(state)
    if shards == 1:
        torch.save(state, target / "pytorch_model.bin")
        return target
    index = {}
    for number in range(shards):
        part = names[number::shards]
        file = f"pytorch_model-{number + 1:05d}-of-{shards:05d}.bin"
        torch.save({name: state[name] for name in part}, target / file)
        index |= dict.fromkeys(part, file)
    (target / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return target


class _Payload:
    """An object whose unpickling would run code (it touches a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_bin_that_holds_code_is_refused_and_never_run(tiny_model: Path, tmp_path: Path) -> None:
    import torch

    folder = as_bin(tiny_model, tmp_path / "evil")
    marker = tmp_path / "ran"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="cannot be read as plain weights.*safetensors") as raised:
        checkpoints.inspect_source(folder)
    assert not marker.exists() and "\n" not in str(raised.value)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_safetensors_in_each_dtype_sharded_are_read_from_the_headers(tmp_path: Path, dtype: str) -> None:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "vocab_size": 1000, "tie_word_embeddings": False}
    folder = make_shaped_model(tmp_path / dtype, config, dtype=dtype, shard_mb=0.1)
    assert len(list(folder.glob("*.safetensors"))) > 1
    source = checkpoints.inspect_source(folder)
    assert source.largest_tensor == 1000 * 64 and source.parameters > 2 * 1000 * 64


def _quantized(tiny_model: Path, target: Path, tensors: dict, quantization_config: dict | None) -> Path:
    """A copy of the tiny model's folder whose weights are ``tensors`` (as a quantizer saved them)."""
    from safetensors.numpy import save_file

    shutil.copytree(tiny_model, target, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(tensors, str(target / "model.safetensors"))
    if quantization_config is not None:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "quantization_config": quantization_config}))
    return target


def bnb_4bit_tensors() -> dict:
    """The tensors bitsandbytes' 4-bit save writes for one layer's q_proj (packed uint8 plus its quant state)."""
    import numpy as np

    q = "model.layers.0.self_attn.q_proj.weight"
    return {"model.embed_tokens.weight": np.zeros((400, 64), np.float16), "lm_head.weight": np.zeros((400, 64), np.float16),
            q: np.zeros((2048, 1), np.uint8), f"{q}.absmax": np.zeros(64, np.float32),
            f"{q}.quant_map": np.zeros(16, np.float32), f"{q}.quant_state.bitsandbytes__nf4": np.zeros(80, np.uint8)}


def test_already_quantized_checkpoints_are_refused_naming_the_16_bit_model(tiny_model: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    bnb = _quantized(tiny_model, tmp_path / "Tiny-Chat-bnb-4bit", bnb_4bit_tensors(),
                     {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    with pytest.raises(QuantizedCheckpointError, match=r"bitsandbytes 4-bit.*16-bit model.*\(Tiny-Chat,") as raised:
        checkpoints.inspect_source(bnb)
    assert raised.value.original == "Tiny-Chat" and "\n" not in str(raised.value)
    gptq = {"model.embed_tokens.weight": np.zeros((400, 64), np.float16),
            "model.layers.0.self_attn.q_proj.qweight": np.zeros((8, 64), np.int32),
            "model.layers.0.self_attn.q_proj.qzeros": np.zeros((1, 8), np.int32),
            "model.layers.0.self_attn.q_proj.scales": np.zeros((1, 64), np.float16)}
    with pytest.raises(QuantizedCheckpointError, match=r"\(gptq 4-bit\)"):
        checkpoints.inspect_source(_quantized(tiny_model, tmp_path / "gptq", gptq, {"quant_method": "gptq", "bits": 4}))
    with pytest.raises(QuantizedCheckpointError, match=r"\(GPTQ/AWQ\)"):  # no quantization_config: told by the names
        checkpoints.inspect_source(_quantized(tiny_model, tmp_path / "awq-noconfig", gptq, None))
    with pytest.raises(QuantizedCheckpointError, match="awq"):
        checkpoints.inspect_source(_quantized(tiny_model, tmp_path / "awq", gptq, {"quant_method": "awq", "w_bit": 4}))
    int8 = {"model.embed_tokens.weight": np.zeros((400, 64), np.float16),
            "model.layers.0.mlp.up_proj.weight": np.zeros((128, 64), np.int8)}
    with pytest.raises(QuantizedCheckpointError, match="I8 weights"):
        checkpoints.inspect_source(_quantized(tiny_model, tmp_path / "int8", int8, None))
    out = tmp_path / "never"
    assert cli.main(["convert", str(bnb), "--precision", "int4", "--out", str(out)]) == 2 and not out.exists()
    assert "already-quantized" in capsys.readouterr().err


def _edited(tiny_model: Path, target: Path, **fields) -> Path:
    shutil.copytree(tiny_model, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **fields}))
    return target


@pytest.mark.parametrize(("fields", "message"), [
    ({"vocab_size": 512}, ("vocab_size 512, but the embedding table model.embed_tokens.weight has 400 rows. "
                           "Set vocab_size to 400")),
    ({"hidden_size": 128}, "hidden_size 128, but the embedding table .* is 64 wide"),
    ({"num_hidden_layers": 3}, "num_hidden_layers 3, but the weights hold 2 layers. Set num_hidden_layers to 2"),
    ({"num_hidden_layers": 1}, "num_hidden_layers 1, but the weights hold 2 layers"),
])
def test_config_flags_that_contradict_the_weights_are_refused(tiny_model: Path, tmp_path: Path, fields: dict,
                                                              message: str) -> None:
    folder = _edited(tiny_model, tmp_path / "edited", **fields)
    with pytest.raises(InconsistentCheckpointError, match=message) as raised:
        checkpoints.inspect_source(folder)
    assert "\n" not in str(raised.value)
    out = tmp_path / "never"
    assert cli.main(["convert", str(folder), "--out", str(out)]) == 2 and not out.exists()


def test_an_untied_config_without_an_lm_head_is_refused(tmp_path: Path) -> None:
    tied = make_tiny_model(tmp_path / "tied", tie_embeddings=True)
    assert checkpoints.inspect_source(tied).tied_embeddings
    config = json.loads((tied / "config.json").read_text())
    (tied / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(InconsistentCheckpointError, match="no lm_head.weight.*Set tie_word_embeddings to true"):
        checkpoints.inspect_source(tied)
    # Left out, the architecture's default decides: Llama's (and Qwen2's) is untied, as transformers loads it.
    config.pop("tie_word_embeddings")
    (tied / "config.json").write_text(json.dumps({**config, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(InconsistentCheckpointError, match="no lm_head.weight"):
        checkpoints.inspect_source(tied)
    (tied / "config.json").write_text(json.dumps({**config, "model_type": "gemma", "architectures": ["GemmaForCausalLM"]}))
    assert checkpoints.inspect_source(tied).tied_embeddings  # Gemma's default is tied


def test_a_truncated_safetensors_file_is_refused_before_any_work(tiny_model: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """An interrupted download: the header is whole, the tensors' data is not."""
    folder = tmp_path / "partial"
    shutil.copytree(tiny_model, folder)
    weights = next(folder.glob("*.safetensors"))
    whole = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(whole - 1000)
    with pytest.raises(ModelFolderError, match=rf"{weights.name} is truncated \({whole - 1000:,} of {whole:,} bytes\)"):
        checkpoints.inspect_source(folder)
    out = tmp_path / "never"
    assert cli.main(["convert", str(folder), "--out", str(out)]) == 2 and not out.exists()
    assert "Download or copy the model again" in capsys.readouterr().err
