"""INT4 recipes that keep the fine-tune (issue 25): mixed precision per MatMul, ranking by distance to FP32."""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.core import codec
from slmops.toolkit.domain.options import INT4_RECIPES, Int4Mix, Int4Options
from slmops.toolkit.domain.quant_plan import QuantPlan, mixed_bits, use_more_bits
from slmops.toolkit.domain.recipe_choice import recommend_recipe
from slmops.toolkit.domain.results.recipes import RecipeResult


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


# --- A fine-tune's LoRA kept in the graph: measured and shown beside the merged recipes, never adopted (issue 44) ---


def _in_graph(name: str = "mixed-lora", *, kl: float = 0.01, top1: float = 0.99, tps: float = 200.0,
              output_dir: str = "") -> RecipeResult:
    """A build whose LoRA stays in the graph, closer to FP32 and faster than any merged one (it would rank first)."""
    return RecipeResult(recipe=name, note="side branch", output_dir=output_dir, size_mb=100.0, size_ratio_vs_fp32=0.2,
                        top1_agreement=top1, kl_divergence=kl, perplexity=12.0, reference_perplexity=12.0,
                        decode_tps=tps, lora_in_graph=True, bits_per_weight=10.01, parity_top1_agreement=0.812,
                        parity_kl_divergence=0.295)


def test_a_lora_in_the_graph_ranked_first_is_never_recommended_nor_adopted(tmp_path, monkeypatch) -> None:
    import json

    import pytest

    from slmops.toolkit.core.errors import InvalidOptionError
    from slmops.toolkit.domain.recipe_choice import fidelity_key
    from slmops.toolkit.orchestration import recipes, run_stages, runs

    results = [_result("mixed", top1=0.90, kl=0.13, perplexity=55.0), _result("int8-head", top1=0.88, kl=0.31,
                                                                                perplexity=40.0), _in_graph()]
    assert min(results, key=fidelity_key).recipe == "mixed-lora"  # it ranks first by the recommendation's own key
    assert recommend_recipe(results, top1_target=0.85)[0] == "mixed"
    assert recommend_recipe(results, top1_target=0.99)[0] == "mixed"  # no target met: still a merged one
    with pytest.raises(InvalidOptionError, match="mixed-lora"):
        recipes.adopt_recipe(results, "mixed-lora", tmp_path / "models")
    with pytest.raises(ValueError, match="LoRA in the graph"):  # nothing merged left to recommend
        recommend_recipe([_in_graph()])
    # The run's recipe stage adopts the recommended merged recipe, not the in-graph build ranked first.
    run = runs.open_run(tmp_path / "params.json", {"run_dir": str(tmp_path), "finetune": False})
    (run.models / "fp32").mkdir(parents=True)
    (run.models / "fp32" / "genai_config.json").write_text(json.dumps({}))
    (run.models / "int4").mkdir()
    adopted = []
    monkeypatch.setattr(run_stages.recipes, "compare_int4_recipes", lambda *a, **k: results)
    monkeypatch.setattr(run_stages.recipes, "adopt_recipe", lambda rs, name, models: adopted.append(name))
    assert run_stages.compare_recipes(run, progress=False) == results and adopted == ["mixed"]


def test_the_recipe_stage_builds_the_lora_in_the_graph_of_an_adapter_source_only(tiny_model, tmp_path,
                                                                                 monkeypatch) -> None:
    import json

    from slmops.toolkit.orchestration import run_stages, runs
    from tests.unit.test_adapters import make_adapter

    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    adapter = make_adapter(tiny_model, tmp_path / "adapter", target_modules=("q_proj", "v_proj"))
    compared = {}

    def compare(model_dir, out_dir, reference_dir, recipes=None, **kwargs):
        compared[Path(model_dir).name] = list(recipes or [])
        return []

    monkeypatch.setattr(run_stages.recipes, "compare_int4_recipes", compare)
    for name, params in (("fine-tune", {"model_dir": str(tiny_model), "adapter": str(adapter)}),
                         ("plain", {"model_dir": str(tiny_model), "finetune": False})):
        folder = tmp_path / name
        run = runs.open_run(folder / "params.json", {**params, "run_dir": str(folder)})
        (run.models / "fp32").mkdir(parents=True)
        (run.models / "fp32" / "genai_config.json").write_text(json.dumps({}))
        run_stages.compare_recipes(run, progress=False)
    assert compared[adapter.name] == [*INT4_RECIPES, "mixed-lora"]  # the merged recipes and the LoRA in the graph
    assert compared[tiny_model.name] == list(INT4_RECIPES)  # no LoRA: the merged recipes only


def test_the_report_and_the_notebook_show_the_lora_in_the_graph_labelled_with_its_parity_figure(tmp_path) -> None:
    import json

    from slmops.toolkit.domain.results.recipes import read_recipes, write_recipes
    from slmops.toolkit.orchestration import run_stages
    from slmops.toolkit.presentation import report
    from tests.unit.test_compare import write_run

    run = write_run(tmp_path / "r", block=32, int4_mb=40.0, top1=0.7, domain_ok=True, decode=120.0, ttft=90.0)
    for thin in ("models/convert.json", "bench.json"):  # this fixture's are too thin for the page's tables
        (run / thin).unlink()
    results = [_result("mixed", top1=0.767, kl=0.435, perplexity=55.0, tps=150.0), _in_graph(kl=0.295, top1=0.812)]
    write_recipes(run / "models" / "recipes" / "recipes.json", results)
    assert read_recipes(run / "models" / "recipes" / "recipes.json") == results  # one record, one codec
    page = report.write_index(run).read_text()
    table = page.split("<h2>INT4 recipes against FP32</h2>")[1].split("</table>")[0]
    row = table.split("mixed-lora (LoRA kept in the graph; shown, not adopted)</td>")[1].split("</tr>")[0]
    assert row.startswith('<td class="num">100</td><td class="num">0.20</td><td class="num">10.0</td>')  # bits/weight
    assert row.endswith('<td class="num">0.81</td><td class="num">0.29</td><td class="text">side branch</td>')
    assert "<th>parity gate: top-1 vs source</th>" in table and "<th>bits per weight</th>" in table
    words = run_stages.recipe_words(results)
    for said in (words, page):
        assert ("`mixed-lora`: LoRA kept in the graph; shown, not adopted. Its parity gate against the merged "
                "fine-tune in transformers: pass, top-1 0.812, KL 0.295") in said.replace("&#x60;", "`")
    assert "Recommended INT4 recipe: `mixed`" in words
    # A version-3 file (before the LoRA in the graph was compared) reads its recipes as merged ones.
    (run / "models" / "recipes" / "recipes.json").write_text(json.dumps({"schema_version": 3, "recipes": [
        {k: v for k, v in codec.dump(results[1]).items()
         if k not in ("lora_in_graph", "bits_per_weight", "parity_top1_agreement", "parity_kl_divergence")}]}))
    (old,) = read_recipes(run / "models" / "recipes" / "recipes.json")
    assert not old.lora_in_graph and old.bits_per_weight is None and old.parity_kl_divergence is None


def test_the_recipes_plot_names_every_point_in_its_legend_without_labels_that_can_overlap() -> None:
    """Two recipes of one size and agreement (hqq and mixed on Gemma 3 270M) drew their labels on top of each
    other; each point is named in the legend instead, the in-graph one marked as not adopted."""
    from slmops.toolkit.presentation.plots import plot_recipes

    results = [_result("hqq", top1=0.745, kl=0.41, perplexity=74.0, tps=6.0),
               _result("mixed", top1=0.744, kl=0.45, perplexity=50.0, tps=38.0), _in_graph()]
    ax = plot_recipes(results)
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [n.split(":")[0] for n in names[1:]] == ["hqq", "mixed", "mixed-lora"]
    assert "not adopted" in names[-1]
    assert not ax.texts  # no label drawn on the points
