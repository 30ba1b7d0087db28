"""A registered model serves its prefill with the LM head on the last position, and still gives every position's logits."""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages import register
from slmops.toolkit.stages.register_catalog import unregister
from slmops.toolkit.weights.lm_head import ALL_POSITIONS, is_pruned


def test_the_registered_graph_is_pruned_and_the_full_one_answers_for_every_position(tiny_int4: Path) -> None:
    reg = register.register(tiny_int4, "tiny-served", model_config=register.ModelConfig(threads=None))
    try:
        assert is_pruned(reg.path / "model.onnx") and not is_pruned(reg.path / ALL_POSITIONS)
        assert not is_pruned(tiny_int4 / "model.onnx")  # the converted folder keeps its graph
        # Every position's logits through the full graph kept beside the served one, read in a child process as the
        # toolkit reads them (this process holds Foundry Local's own copy of the runtime once a model is registered).
        [same] = genai.agreement(tiny_int4, {"served": reg.path}, "The quick brown fox jumps over the lazy dog.")
        assert (same.top1_agreement, same.kl_divergence) == (1.0, 0.0) and same.tokens > 5
        # Foundry Local (its own ONNX Runtime GenAI) loads the served graph and answers with it.
        with LoadedModel("tiny-served") as served_model:
            parts = list(served_model.chat("hello", max_tokens=3, temperature=0))
        assert parts and parts[-1].prompt_tokens > 0
    finally:
        unregister("tiny-served")
