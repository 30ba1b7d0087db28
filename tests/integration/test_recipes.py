"""INT4 recipes that keep the fine-tune (issue 25): mixed precision per MatMul, ranking by distance to FP32."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.toolkit.domain import recipe_choice
from slmops.toolkit.domain.options import INT4_RECIPES, Precision
from slmops.toolkit.domain.quant_plan import QuantPlan, use_more_bits
from slmops.toolkit.weights.quantize import quantize


def test_mixed_plan_keeps_chosen_matmuls_at_8_bits_and_splits_the_value_out_of_qkv(tiny_fp32: Path,
                                                                                    tmp_path: Path) -> None:
    import shutil

    import numpy as np
    import onnx

    out = tmp_path / "mixed"
    out.mkdir()
    for f in tiny_fp32.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    quantize(tiny_fp32 / "model.onnx", out / "model.onnx",
             QuantPlan(lm_head_bits=8, embedding_bits=8, mix="v-all-down-more-bits"))
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    bits = {n.name: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    layers = 1 + max(int(name.split("layers.")[1].split("/")[0]) for name in bits if "layers." in name)
    for name, b in bits.items():
        if "/v/MatMul" in name:
            assert b == 8, name
        elif "/qk/MatMul" in name:
            assert b == 4, name
        elif "down_proj" in name:
            layer = int(name.split("layers.")[1].split("/")[0])
            assert b == (8 if use_more_bits(layer, layers) else 4), name
    assert any("/v/MatMul" in n for n in bits) and any(b == 8 for n, b in bits.items() if "down_proj" in n)
    # The split model runs and computes what the unsplit one does, up to quantization (in a child process:
    # ONNX Runtime GenAI cannot load beside Foundry Local's own build, which other tests load in this one).
    from slmops.toolkit.runtimes import genai

    (mixed,) = genai.agreement(tiny_fp32, {"mixed": out})
    assert np.isfinite(mixed.kl_divergence) and mixed.kl_divergence < 0.05
    assert genai.decode_speeds({"mixed": out})["mixed"] > 0  # the decode probe's child, as recipes call it
    # Distance to a base model comes from the same pass, and equals a comparison made against that base alone.
    one_pass = {a.model: a for a in genai.agreement(tiny_fp32, {"fp32": tiny_fp32, "mixed": out}, base_dir=out)}
    (alone,) = genai.agreement(out, {"fp32": tiny_fp32})
    assert one_pass["mixed"].kl_divergence_to_base == 0
    assert one_pass["fp32"].kl_divergence_to_base == alone.kl_divergence > 0
    assert one_pass["mixed"].kl_divergence == mixed.kl_divergence and one_pass["fp32"].kl_divergence == 0
    assert mixed.kl_divergence_to_base is None  # no base given


def test_the_mixed_recipe_reaches_the_quantizer_through_convert(tiny_model: Path, tmp_path: Path) -> None:
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec, quant_plan

    options = INT4_RECIPES["mixed"]
    assert quant_plan(ConvertSpec(tiny_model, tmp_path, Precision.INT4, int4=options)).mix == str(options.mix)
    built = convert(ConvertSpec(tiny_model, tmp_path / "mixed", Precision.INT4, int4=options), progress=False)
    assert built.manifest.quantizer.mix == str(options.mix) and built.manifest.parity.verdict == "pass"
    assert {"int4", "int8"} <= set(built.manifest.weights.parameters)
    # Asymmetric: every body MatMulNBits has its zero points (the blocks of a de-quantized GGUF carry a minimum).
    import onnx

    graph = onnx.load(str(built.output_dir / "model.onnx"), load_external_data=False).graph
    body = [n for n in graph.node if n.op_type == "MatMulNBits" and "/layers." in n.name]
    assert body and all(len(n.input) >= 4 and n.input[3] for n in body)


def test_a_recipe_the_parity_gate_refuses_stays_in_the_comparison_and_is_never_recommended(
        tiny_model: Path, tiny_fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gemma 3 fine-tune's builder INT4 fails the gate: the comparison used to stop the whole run there.

    Then the build cache: the next comparison copies the build and the refusal instead of making them again.
    """
    from slmops.toolkit.domain import parity
    from slmops.toolkit.domain.results.recipes import read_recipes
    from slmops.toolkit.orchestration import recipes

    real_build, usual = recipes.build, parity.QUANTIZED

    def strict_for_compact(prepared, **kwargs):  # a fault injected into the real gate: compact's build cannot pass
        strict = prepared.spec.output_dir.name == "compact"
        monkeypatch.setattr(parity, "QUANTIZED", parity.Tolerance(min_top1=1.01) if strict else usual)
        return real_build(prepared, **kwargs)

    monkeypatch.setattr(recipes, "build", strict_for_compact)
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    results = recipes.compare_int4_recipes(tiny_model, tmp_path / "recipes", tiny_fp32, ["compact", "int8-head"],
                                           progress=False, cache=True)
    compact, int8_head = results
    assert compact.refused.startswith("The int4 build of") and "Nothing was put in place" in compact.refused
    assert compact.decode_tps is None and compact.perplexity is None and compact.output_dir == ""
    assert 0 <= compact.top1_agreement <= 1 and compact.kl_divergence >= 0 and compact.size_mb > 0  # the gate's figures
    assert not (tmp_path / "recipes" / "compact" / "model.onnx").exists()
    assert not int8_head.refused and int8_head.decode_tps > 0
    name, why = recipe_choice.recommend_recipe(results)
    assert name == "int8-head" and "Refused by the parity gate" in why and "`compact`" in why
    assert read_recipes(tmp_path / "recipes" / "recipes.json") == results
    with pytest.raises(ValueError, match="every INT4 recipe"):
        recipe_choice.recommend_recipe([compact])

    # The next comparison of the same source, options, packages and code copies the build and the refusal
    # from the build cache (nothing is converted) and measures the same figures.
    def no_convert(prepared, **kwargs):
        raise AssertionError(f"{prepared.spec.output_dir.name} was built again")

    monkeypatch.setattr(recipes, "build", no_convert)
    again = recipes.compare_int4_recipes(tiny_model, tmp_path / "again", tiny_fp32, ["compact", "int8-head"],
                                         progress=False, cache=True)
    assert again[0].refused == compact.refused and again[0].top1_agreement == compact.top1_agreement
    assert (again[1].top1_agreement, again[1].kl_divergence, again[1].size_mb) == (
        int8_head.top1_agreement, int8_head.kl_divergence, int8_head.size_mb)
    from slmops.toolkit.domain.results.conversion import read_manifest

    assert read_manifest(tmp_path / "again" / "int8-head").build_cache.key
    # Other toolkit code (a changed quantizer) never reuses them: both are made again.
    built = []
    monkeypatch.setattr(recipes, "build", lambda prepared, **kwargs: built.append(prepared.spec.output_dir.name)
                        or real_build(prepared, **kwargs))
    monkeypatch.setattr(recipes.build_cache, "code_fingerprint", lambda *modules: "other code")
    recipes.compare_int4_recipes(tiny_model, tmp_path / "third", tiny_fp32, ["compact", "int8-head"],
                                 progress=False, cache=True)
    assert built == ["compact", "int8-head"]
