"""INT4 recipes that keep the fine-tune (issue 25): mixed precision per MatMul, ranking by distance to FP32."""

from __future__ import annotations

from slmops.toolkit.domain.options import INT4_RECIPES, Int4Mix, Int4Options
from slmops.toolkit.orchestration.recipes import RecipeResult, recommend_recipe
from slmops.toolkit.weights.quantize import QuantPlan, mixed_bits, use_more_bits


def test_use_more_bits_is_llama_cpps_choice_of_layers() -> None:
    assert [i for i in range(30) if use_more_bits(i, 30)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_mixes_choose_value_and_down_projections() -> None:
    plan = QuantPlan(mix="v-all-down-more-bits")
    assert mixed_bits("/model/layers.4/attn/qkv_proj/MatMul", plan, 30) == 8
    assert mixed_bits("/model/layers.4/mlp/down_proj/MatMul", plan, 30) == 4
    assert mixed_bits("/model/layers.11/mlp/down_proj/MatMul", plan, 30) == 8
    assert mixed_bits("/model/layers.11/mlp/up_proj/MatMul", plan, 30) == 4
    assert mixed_bits("/model/layers.4/attn/qkv_proj/MatMul", QuantPlan(mix="q4_k_m"), 30) == 4


def test_mixed_recipe_is_a_named_recipe_and_not_the_builders() -> None:
    mixed = INT4_RECIPES["mixed"]
    assert mixed.mix is Int4Mix.V_ALL_DOWN_MORE_BITS and not mixed.builder_native
    assert Int4Options().mix is Int4Mix.NONE


def _result(name: str, top1: float, kl: float, perplexity: float, *, tps: float = 100.0, kl_to_base=None,
            moved=False) -> RecipeResult:
    return RecipeResult(recipe=name, note="", output_dir="", size_mb=100.0, size_ratio_vs_fp32=0.2, top1_agreement=top1, kl_divergence=kl,
                        perplexity=perplexity, reference_perplexity=57.0, decode_tps=tps, kl_divergence_to_base=kl_to_base,
                        moved_toward_base=moved)


def test_recommendation_ranks_by_kl_not_perplexity_and_never_picks_a_build_that_moved_to_the_base() -> None:
    results = [
        _result("hqq-like", top1=0.90, kl=0.05, perplexity=17.0, kl_to_base=0.01, moved=True),
        _result("int8-head", top1=0.90, kl=0.31, perplexity=40.0),
        _result("mixed", top1=0.90, kl=0.13, perplexity=55.0),
    ]
    assert recommend_recipe(results, top1_target=0.85)[0] == "mixed"
    assert "KL" in recommend_recipe(results, top1_target=0.85)[1]
    # Without a target met: still the closest to FP32 among the fast ones.
    assert recommend_recipe(results, top1_target=0.99)[0] == "mixed"
