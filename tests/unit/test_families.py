"""Each family people fine-tune, without a build: transformers 5's RoPE parameters reach the builder under
the names it reads."""

from __future__ import annotations

from tests.families import FAMILIES


def test_transformers5_rope_parameters_get_the_names_the_builder_reads() -> None:
    from transformers import AutoConfig

    from slmops.toolkit.runtimes.genai_builder import normalize_config

    fields = {k: v for k, v in FAMILIES["gemma3"].items() if k != "model_type"}
    config = AutoConfig.for_model("gemma3_text", **fields)
    normalize_config(config)
    assert (config.rope_theta, config.rope_local_base_freq) == (1e6, 1e4)
    config = AutoConfig.for_model("qwen2", rope_theta=1e6)
    normalize_config(config)
    assert config.rope_theta == 1e6
