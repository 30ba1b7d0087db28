"""Fine-tunes' turn markers checked before anything is built: an end-of-turn token past the vocabulary is
refused at registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages import register

NO_PROBE = register.ModelConfig(threads=None)  # the thread probe is not what these tests check


def test_an_end_of_turn_token_past_the_vocabulary_is_refused_at_registration(tmp_path: Path) -> None:
    """A tokenizer given new turn markers without resize_token_embeddings: the build passes parity (its text
    never uses them), but registering it once gave an eos_token_id that the runtime cannot load. Convert now
    refuses such a source before any work; registration still refuses such a build (made elsewhere)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from slmops.toolkit.core.errors import InputError
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.orchestration import doctor
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec
    from tests.models import make_tiny_model

    source = make_tiny_model(tmp_path / "grown")
    built = convert(ConvertSpec(source, tmp_path / "fp32", Precision.FP32), progress=False).output_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tokenizer.eos_token = "<|end|>"
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    for folder in (source, built):  # the build as the grown source once made it (convert now refuses the source)
        tokenizer.save_pretrained(folder)
    end = Tokenizer.from_file(str(source / "tokenizer.json")).token_to_id("<|end|>")
    rows = json.loads((source / "config.json").read_text())["vocab_size"]
    assert end >= rows
    with pytest.raises(InputError, match="resize_token_embeddings"):
        convert(ConvertSpec(source, tmp_path / "again", Precision.FP32), progress=False)
    config = json.loads((built / "genai_config.json").read_text())
    check = doctor.stop_check(built, config)
    assert not check.ok and f"past the model's {rows}-token vocabulary" in check.detail
    target = models_root(None) / "grown-fp32"
    with pytest.raises(InputError, match=rf"<\|end\|> .* is token {end}, past the model's {rows}-token vocabulary"):
        register.register(built, "grown-fp32", model_config=NO_PROBE)
    assert not target.exists()
