"""A registered model serves its prefill with the LM head on the last position, and still gives every position's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmops.toolkit.domain.lm_head import ALL_POSITIONS, is_pruned
from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages import register as R


def test_the_registered_graph_is_pruned_and_the_full_one_answers_for_every_position(tiny_int4: Path) -> None:
    reg = R.register(tiny_int4, "tiny-served", model_config=R.ModelConfig(threads=None))
    try:
        assert is_pruned(reg.path / "model.onnx") and not is_pruned(reg.path / ALL_POSITIONS)
        assert not is_pruned(tiny_int4 / "model.onnx")  # the converted folder keeps its graph
        text = "The quick brown fox jumps over the lazy dog."
        ids, every = genai.logits(tiny_int4, text)
        served_ids, served = genai.logits(reg.path, text)  # through the full graph kept beside the served one
        np.testing.assert_array_equal(served_ids, ids)
        np.testing.assert_array_equal(served, every)
        # The served graph's first token: the full graph's last row, in ONNX Runtime GenAI directly...
        import onnxruntime_genai as og

        model = og.Model(str(genai.readable_dir(reg.path)))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 2)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        np.testing.assert_allclose(np.asarray(generator.get_logits()).reshape(-1), every[-1], rtol=1e-5, atol=1e-5)
        # ... and Foundry Local (its own ONNX Runtime GenAI) loads and answers with it.
        with LoadedModel("tiny-served") as served_model:
            parts = list(served_model.chat("hello", max_tokens=3, temperature=0))
        assert parts and parts[-1].prompt_tokens > 0
    finally:
        R.unregister("tiny-served")
