"""Adapters as trainers save them (issue 24, items 4-7): added tokens, their own tokenizer and template, a QLoRA
4-bit base, a base saved as pytorch_model.bin. Real peft adapters on the tiny random model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import adapters
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.results.merge import VocabSizes
from slmops.toolkit.weights import adapter_inspect
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from slmops.toolkit.weights.adapter_merge import merge
from tests.unit.test_adapters import ADDED, make_adapter
from tests.unit.test_checkpoints import as_bin

#: Merged folders go to a temporary toolkit home (the merge's child inherits it).
pytestmark = pytest.mark.usefixtures("slmops_home")

#: A template unlike the base's ChatML, as a fine-tune might bring its own.
ADAPTER_TEMPLATE = ("{% for message in messages %}{{ '### ' + message['role'] + ':\n' + message['content'] + "
                    "'<|end_turn|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")


def test_an_adapter_saving_the_head_of_a_tied_base_converts_and_passes_parity(tmp_path: Path) -> None:
    """The merge of tests/unit/test_adapters.py's tied-head adapter, converted: its FP32 build passes the parity gate."""
    from tests.models import make_tiny_model

    tied = make_tiny_model(tmp_path / "tied", tie_embeddings=True)
    adapter = make_adapter(tied, tmp_path / "added", added=tuple(ADDED), save_tokenizer=True,
                           modules_to_save=["embed_tokens", "lm_head"])
    out = tmp_path / "fp32"
    assert cli.main(["convert", str(adapter), "--precision", "fp32", "--out", str(out)]) == 0
    assert read_manifest(out).parity.verdict == "pass"


def test_an_adapter_with_added_tokens_is_merged_into_the_base_resized_first(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_model, tmp_path / "added", added=tuple(ADDED), save_tokenizer=True,
                           modules_to_save=["embed_tokens", "lm_head"])
    checked = inspect_adapter(adapter)
    merged = merge(checked)  # was: the merge died with a truncated RuntimeError
    assert (checked.vocab_size, checked.base_vocab_size) == (402, 400)
    assert set(checked.modules_to_save) == {"embed_tokens", "lm_head"}
    record = adapters.read_merge_record(merged, checked)
    assert record.vocab_size == VocabSizes(400, 402) and record.tokenizer.vocab_size == 402
    assert record.merge_check.max_abs_diff_vs_unmerged < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(merged)
    new_ids = tokenizer.convert_tokens_to_ids(ADDED)
    assert len(tokenizer) == 402 and new_ids == [400, 401]
    model = AutoModelForCausalLM.from_pretrained(merged)
    saved = load_file(adapter / "adapter_model.safetensors")
    assert torch.equal(model.get_input_embeddings().weight[400:], saved["base_model.model.model.embed_tokens.weight"][400:])
    # The merged model computes what base + adapter compute, on ids that include the new tokens.
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base.resize_token_embeddings(402, mean_resizing=False)
    ids = torch.tensor([[5, 400, 17, 401, 3]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, adapter)(ids).logits
        assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    out = tmp_path / "fp32"
    assert cli.main(["convert", str(adapter), "--precision", "fp32", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.adapter.vocab_size.merged == 402
    assert manifest.adapter.tokenizer.tokenizer_from == "adapter"


def test_the_adapters_own_tokenizer_template_and_generation_config_win(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    adapter = make_adapter(tiny_model, tmp_path / "own", save_tokenizer=True, template=ADAPTER_TEMPLATE,
                           eos="<|endoftext|>")
    base_tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert base_tokenizer.eos_token == "<|im_end|>" and base_tokenizer.chat_template != ADAPTER_TEMPLATE
    checked = inspect_adapter(adapter)
    merged = merge(checked)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == ADAPTER_TEMPLATE and tokenizer.eos_token == "<|endoftext|>"  # was: the base's
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= set(checked.own_files)
    record = adapters.read_merge_record(merged, checked).tokenizer
    assert (record.tokenizer_from, record.chat_template_from, record.generation_config_from) == (
        "adapter", "adapter", "base")
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert record.eos_token_ids_added == (endoftext,)  # the fine-tune's EOS joins the base's in generation_config
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [im_end, endoftext]
    # A generation_config.json and a template saved alone (no tokenizer files) win too; the base's tokenizer stays.
    template_only = make_adapter(tiny_model, tmp_path / "template-only", seed=1)
    (template_only / "chat_template.jinja").write_text(ADAPTER_TEMPLATE)
    (template_only / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, 7], "do_sample": False}))
    template_checked = inspect_adapter(template_only)
    merged = merge(template_checked)
    assert AutoTokenizer.from_pretrained(merged).chat_template == ADAPTER_TEMPLATE
    assert json.loads((merged / "generation_config.json").read_text())["eos_token_id"] == [im_end, 7]
    record = adapters.read_merge_record(merged, template_checked)
    assert (record.tokenizer.tokenizer_from, record.tokenizer.chat_template_from) == ("base", "adapter")
    assert record.files_from_adapter == ("chat_template.jinja", "generation_config.json")


def test_an_adapter_on_a_bin_base_is_checked_from_the_bin_and_merged(tiny_model: Path, tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    base = as_bin(tiny_model, tmp_path / "bin-base")
    adapter = make_adapter(tiny_model, tmp_path / "on-bin")
    checked = inspect_adapter(adapter, base)  # was: "the base does not have q_proj"
    assert checked.target_modules == ("q_proj", "v_proj") and checked.base == base.resolve()
    merged = merge(checked)
    assert adapters.read_merge_record(merged, checked).merge_check.max_abs_diff_vs_unmerged < 1e-4
    wrong = tmp_path / "wrong"
    shutil.copytree(adapter, wrong)
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 32), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 4), np.float32)},
              str(wrong / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="another model size"):  # the shapes really come from the .bin
        inspect_adapter(wrong, base)


def test_an_adapter_saving_the_head_of_a_tied_base_is_merged_untied(tmp_path: Path) -> None:
    """SmolLM2, Qwen2.5, Llama 3.2 and Gemma tie their LM head to the embeddings and store no lm_head.weight."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.models import make_tiny_model

    tied = make_tiny_model(tmp_path / "tied", tie_embeddings=True)
    adapter = make_adapter(tied, tmp_path / "added", added=tuple(ADDED), save_tokenizer=True,
                           modules_to_save=["embed_tokens", "lm_head"])
    checked = inspect_adapter(adapter)  # was: "saves lm_head whole, which the base does not have"
    assert checked.vocab_size == 402
    merged = merge(checked)
    model = AutoModelForCausalLM.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(tied)
    base.resize_token_embeddings(402, mean_resizing=False)
    ids = torch.tensor([[5, 400, 17, 401, 3]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, PeftModel.from_pretrained(base, adapter)(ids).logits, atol=1e-4)
    # Converted, its build passes the parity gate: test_an_adapter_saving_the_head_of_a_tied_base_converts_and_passes_parity.


def test_lora_on_a_tied_head_is_refused_and_a_merge_that_changes_the_model_is_never_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.models import make_tiny_model

    tied = make_tiny_model(tmp_path / "tied", tie_embeddings=True)
    adapter = make_adapter(tied, tmp_path / "head-lora", target_modules=("q_proj", "lm_head"))
    with pytest.raises(InputError, match="trains LoRA on lm_head, which the base .* ties to its embedding table"):
        inspect_adapter(adapter)
    # Past that check, peft's merge changes the embeddings too: the merge's own check refuses to keep it.
    monkeypatch.setattr(adapter_inspect, "check_shapes", lambda *args: None)
    with pytest.raises(InputError, match="changes what the adapter computes .*nothing was kept"):
        merge(inspect_adapter(adapter))
    merged = tmp_path / "home" / "models" / "merged"
    assert not merged.exists() or list(merged.iterdir()) == []
