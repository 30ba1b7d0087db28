"""Adapters as trainers save them (issue 24, items 4-7): added tokens, their own tokenizer and template, a QLoRA
4-bit base, a base saved as pytorch_model.bin. Real peft adapters on the tiny random model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from tests.unit.test_checkpoints import bnb_4bit_tensors

#: Merged folders go to a temporary toolkit home (the merge's child inherits it).
pytestmark = pytest.mark.usefixtures("slmops_home")

ADDED = ["<|tool|>", "<|end_turn|>"]


def make_adapter(base: Path, out: Path, *, added: tuple[str, ...] = (), modules_to_save: list[str] | None = None,
                 save_tokenizer: bool = False, template: str | None = None, eos: str | None = None,
                 seed: int = 0, save_embedding_layers: bool | str = "auto",
                 target_modules: tuple[str, ...] = ("q_proj", "v_proj"), rank: int = 4,
                 token_rows: list[int] | None = None) -> Path:
    """A LoRA adapter on ``base`` with random (nonzero) trained weights, saved as peft and trainers save it.

    Args:
        base: The base model's folder.
        out: The adapter folder to write.
        added: Special tokens added before training (the embedding table and LM head are resized).
        modules_to_save: Modules trained and saved whole.
        save_tokenizer: Save the tokenizer beside the adapter (as TRL and Unsloth do).
        template: A chat template the tokenizer is given before saving.
        eos: The tokenizer's EOS token, when the fine-tune changed it.
        seed: Seed of the trained weights.
        save_embedding_layers: peft's option (``"auto"`` saves a resized model's embedding layers).
        target_modules: The modules LoRA adapts.
        rank: LoRA rank ``r`` (alpha is twice it).
        token_rows: Embedding rows trained too (peft's ``trainable_token_indices``).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": list(added)})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if template is not None:
        tokenizer.chat_template = template
    if eos is not None:
        tokenizer.eos_token = eos
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules),
                                                  modules_to_save=modules_to_save,
                                                  trainable_token_indices=token_rows))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(out, save_embedding_layers=save_embedding_layers)
    if save_tokenizer:
        tokenizer.save_pretrained(out)
    return out


def test_a_resized_adapter_that_cannot_be_merged_is_refused_naming_both_sizes(tiny_model: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoTokenizer

    # peft 0.17 on saves a resized model's LM head by itself: mergeable.
    saved_head = make_adapter(tiny_model, tmp_path / "saved-head", added=tuple(ADDED), save_tokenizer=True,
                              modules_to_save=["embed_tokens"])
    assert inspect_adapter(saved_head).vocab_size == 402
    # Saved without it (older peft, or save_embedding_layers=False): the new tokens' output rows are lost.
    no_head = make_adapter(tiny_model, tmp_path / "no-head", added=tuple(ADDED), save_tokenizer=True,
                           modules_to_save=["embed_tokens"], save_embedding_layers=False)
    with pytest.raises(InputError, match=r"vocabulary is 402 tokens, the base qwen2's 400.*no 402-row lm_head.*"
                                         r"modules_to_save=\['embed_tokens', 'lm_head'\]") as raised:
        inspect_adapter(no_head)
    assert "\n" not in str(raised.value)
    out = tmp_path / "never"
    assert cli.main(["convert", str(no_head), "--out", str(out)]) == 2 and not out.exists()
    assert "402" in capsys.readouterr().err
    larger = make_adapter(tiny_model, tmp_path / "larger", added=tuple(ADDED), save_tokenizer=True,
                          modules_to_save=["embed_tokens", "lm_head"])
    tokenizer = AutoTokenizer.from_pretrained(larger)
    tokenizer.add_special_tokens({"additional_special_tokens": [*ADDED, "<|extra|>"]})
    tokenizer.save_pretrained(larger)  # a tokenizer saved after one more token was added: 403 ids, 402 rows
    with pytest.raises(InputError, match="402 tokens, the base qwen2's 400, and the tokenizer in .* has 403"):
        inspect_adapter(larger)
    assert not (tmp_path / "home" / "models" / "merged").exists()


def test_a_qlora_adapter_on_a_4bit_base_is_refused_naming_the_16_bit_base(tiny_model: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from safetensors.numpy import save_file

    quantized = tmp_path / "qwen2-tiny-bnb-4bit"
    shutil.copytree(tiny_model, quantized, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(bnb_4bit_tensors(), str(quantized / "model.safetensors"))
    config = json.loads((quantized / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": {
        "quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}}))
    adapter = make_adapter(tiny_model, tmp_path / "qlora")
    data = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**data, "base_model_name_or_path": str(quantized)}))
    with pytest.raises(InputError, match=r"already-quantized checkpoint \(bitsandbytes 4-bit\), as QLoRA.*--base DIR "
                                         r"\(qwen2-tiny, saved") as raised:
        inspect_adapter(adapter)  # was: "trained on another model size"
    assert "another model" not in str(raised.value) and "\n" not in str(raised.value)
    out = tmp_path / "never"
    assert cli.main(["convert", str(adapter), "--out", str(out)]) == 2 and not out.exists()
    assert "QLoRA" in capsys.readouterr().err
    assert inspect_adapter(adapter, tiny_model).base == tiny_model.resolve()  # the 16-bit base, with --base


def test_a_base_other_than_the_one_the_adapter_names_is_noted(tiny_model: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """An instruct adapter merged into a base checkpoint of the same shapes runs without an error: say so."""
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    other = shutil.copytree(tiny_model, tmp_path / "other-base")
    with caplog.at_level("WARNING"):
        inspect_adapter(adapter)
        assert not caplog.records
        inspect_adapter(adapter, other)
    (record,) = caplog.records
    assert f"names {tiny_model} as the base it was trained on; merging into --base {other}" in record.getMessage()
