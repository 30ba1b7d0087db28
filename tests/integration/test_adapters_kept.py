"""LoRA adapters kept as adapters: ``slmops convert ADAPTER --keep-adapter`` builds the base
with LoRA inputs and the adapter as its own ``.onnx_adapter`` file, checked with the adapter active against the
merged model in transformers. Real peft adapters on the tiny random model, real builder and ONNX Runtime GenAI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit import cli
from slmops.toolkit.domain import parity
from slmops.toolkit.domain.options import LORA_ERROR_RANK
from slmops.toolkit.domain.results.conversion import read_manifest
from tests.integration.test_adapters import ADAPTER_TEMPLATE
from tests.unit.test_adapters import make_adapter

#: Merged folders (the reference) go to a temporary toolkit home (the merge's child inherits it).
pytestmark = pytest.mark.usefixtures("slmops_home")

#: A few of the tiny tokenizer's ids, past its special tokens.
IDS = list(range(5, 45))


def test_an_adapter_kept_apart_at_fp32_matches_the_merged_model_and_changes_the_base(tiny_model: Path,
                                                                                     tmp_path: Path) -> None:
    # Saved with its own chat template, as trainers save it: the build uses the fine-tune's, not the base's.
    adapter = make_adapter(tiny_model, tmp_path / "support", target_modules=("q_proj", "v_proj", "down_proj"),
                           save_tokenizer=True, template=ADAPTER_TEMPLATE)
    # A second fine-tune of the same base, of another rank on some of the same modules: its own file, same build.
    second = make_adapter(tiny_model, tmp_path / "legal", target_modules=("q_proj",), rank=8, seed=1)
    out = tmp_path / "kept"
    assert cli.main(["convert", str(adapter), "--keep-adapter", "--also-adapter", str(second),
                     "--precision", "fp32", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.adapter.kept_apart is True
    assert (out / "chat_template.jinja").read_text() == ADAPTER_TEMPLATE
    entry, other = manifest.adapter_files
    assert other.path == "adapters/legal.onnx_adapter" and other.bytes == (out / other.path).stat().st_size
    # Rank 8 on q_proj of 2 layers: (64 + 64) * 8 floats of 4 bytes per layer, plus a header.
    assert 2 * 8 * 4 * 128 <= other.bytes < 2 * 2 * 8 * 4 * 128
    [second_check] = manifest.parity.more_adapters["legal"].checks
    assert second_check.top1_agreement == 1.0 and second_check.max_diff_of_range <= parity.EXACT.max_diff_of_range
    adapter_file = out / entry.path
    assert entry.path == "adapters/support.onnx_adapter" and entry.bytes == adapter_file.stat().st_size > 0
    # Rank 4 on 3 modules of 2 layers: (64+64)*4 + (64+32)*4 + (128+64)*4 floats of 4 bytes per layer, plus a header.
    assert 2 * 4 * 4 * (128 + 96 + 192) <= entry.bytes < 2 * 2 * 4 * 4 * (128 + 96 + 192)
    [check] = manifest.parity.checks
    assert manifest.parity.verdict == "pass" and check.top1_agreement == 1.0
    assert check.max_diff_of_range <= parity.EXACT.max_diff_of_range
    weights = sum(f.stat().st_size for f in out.glob("model.onnx*"))
    assert manifest.base_size_mb == round(weights / 1e6, 3)
    parameters = manifest.parameters
    assert manifest.bits_per_weight == round(8 * (weights + entry.bytes) / parameters, 3)
    assert manifest.bits_per_weight > manifest.bits_per_weight_without_adapter > 30  # FP32: ~32 bits
    # The adapter is really applied: without it the same graph computes the base, and the two differ.
    logits = _logits(out, _plain_fp32(tiny_model, tmp_path), adapter_file, out / other.path, tmp_path)
    with_adapter, without, with_second = logits["first"], logits["none"], logits["second"]
    noise = np.abs(without - logits["base"]).max()  # two builds of one function: summation order
    assert noise < 1e-4
    floor = 100 * max(noise, 1e-6)
    assert np.abs(with_adapter - without).max() > floor
    # Each adapter applies its own change: switching adapters on the one loaded model changes the logits (by how
    # much depends on the few random training steps: compared with the noise floor, not a fixed size).
    assert np.abs(with_second - without).max() > floor and np.abs(with_second - with_adapter).max() > floor


def _logits(build: Path, base: Path, first: Path, second: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    """The build's logits on :data:`IDS` with each adapter and none, switched on one loaded model, and the base's.

    In a child process, as the toolkit runs ONNX Runtime GenAI: a test process may already hold Foundry Local's own
    copy of the runtime (onnxruntime-genai-core), and the two cannot both be loaded in either order.
    """
    saved = tmp_path / "logits.npz"
    code = (
        "import sys, numpy as np, onnxruntime_genai as og\n"
        "from slmops.toolkit.runtimes.genai import logits_for_ids\n"
        "build, base, first, second, saved, ids = sys.argv[1:6] + [[int(i) for i in sys.argv[6].split(',')]]\n"
        "model = og.Model(build)\n"
        "np.savez(saved, first=logits_for_ids(model, ids, first), none=logits_for_ids(model, ids),\n"
        "         second=logits_for_ids(model, ids, second), base=logits_for_ids(og.Model(base), ids))\n")
    done = subprocess.run([sys.executable, "-c", code, str(build), str(base), str(first), str(second), str(saved),
                           ",".join(map(str, IDS))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(saved) as arrays:
        return {name: arrays[name] for name in arrays.files}


def _plain_fp32(model: Path, tmp_path: Path) -> Path:
    out = tmp_path / "base-fp32"
    assert cli.main(["convert", str(model), "--precision", "fp32", "--out", str(out)]) == 0
    return out


def test_an_adapter_that_cannot_stay_apart_is_refused_in_one_line_before_any_work(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = make_adapter(tiny_model, tmp_path / "whole-head", modules_to_save=["lm_head"])
    out = tmp_path / "kept"
    capsys.readouterr()  # transformers' progress bars while the adapter was made
    assert cli.main(["convert", str(whole), "--keep-adapter", "--precision", "fp32", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "lm_head whole" in error and "without --keep-adapter" in error
    assert cli.main(["convert", str(tiny_model), "--keep-adapter", "--precision", "fp32", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "keep_adapter" in error and "adapter folder" in error
    # A further adapter on a module the first does not adapt: the build would have no LoRA input for it.
    first = make_adapter(tiny_model, tmp_path / "first")
    wider = make_adapter(tiny_model, tmp_path / "wider", target_modules=("q_proj", "o_proj"))
    capsys.readouterr()
    assert cli.main(["convert", str(first), "--keep-adapter", "--also-adapter", str(wider), "--precision", "fp32",
                     "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "adapts o_proj" in error
    assert not out.exists() and not (Path.cwd() / "kept").exists()


def test_an_int4_build_keeps_its_lora_as_an_fp16_side_branch_in_one_graph_and_foundry_local_answers_it(
        tiny_model: Path, tmp_path: Path) -> None:
    import onnx

    from slmops.toolkit.runtimes.foundry import LoadedModel
    from slmops.toolkit.stages import register

    adapter = make_adapter(tiny_model, tmp_path / "support", target_modules=("q_proj", "v_proj", "down_proj"))
    out = tmp_path / "in-graph"
    assert cli.main(["convert", str(adapter), "--adapter-in-graph", "--precision", "int4", "--recipe", "mixed",
                     "--branch-bits", "16", "--branch-layout", "add", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    branched = manifest.lora_branch  # how the branch was built, in its record
    assert (branched.branches, branched.error_rank, branched.branch_bits, branched.layout) == (
        2 * 3, LORA_ERROR_RANK, 16, "add")
    assert manifest.adapter.kept_apart is True and manifest.adapter_files == ()
    assert not (out / "adapters").exists()
    # The parity gate ran against the merged model in transformers: the FP32 export exactly, the INT4 build within
    # what quantization may change.
    fp32_check, int4_check = manifest.parity.checks
    assert manifest.parity.verdict == "pass" and fp32_check.max_diff_of_range <= parity.EXACT.max_diff_of_range
    assert int4_check.build == "int4" and int4_check.top1_agreement >= parity.QUANTIZED.min_top1
    # One graph: no LoRA inputs; each LoRA matrix an FP16 constant cast to float for a plain MatMul (not quantized),
    # the base's MatMuls 4-bit.
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert not [value.name for value in graph.input if "lora" in value.name]
    lora = {init.name: init for init in graph.initializer if ".lora_" in init.name}
    assert len(lora) == 2 * 3 * 2  # 2 layers x 3 modules x (A, B)
    assert all(init.data_type == onnx.TensorProto.FLOAT16 for init in lora.values())
    casts = {node.output[0] for node in graph.node if node.op_type == "Cast" and node.input[0] in lora}
    assert len(casts) == len(lora)
    assert {node.op_type for node in graph.node for name in node.input if name in casts} == {"MatMul"}
    assert sum(node.op_type == "MatMulNBits" for node in graph.node) >= 2 * 7
    # Each branch over a 4-bit base also carries the rank-r' SVD of that base's rounding error (--error-rank's
    # default); over an 8-bit base (the recipe's v and some down projections) the fine-tune's rank 4 alone.
    bits = {node.input[1].rsplit(".MatMul.", 1)[0]: attribute.i for node in graph.node if node.op_type == "MatMulNBits"
            for attribute in node.attribute if attribute.name == "bits"}
    ranks = {name.split(".lora_A.")[0]: list(init.dims)[1] for name, init in lora.items() if ".lora_A." in name}
    assert ranks == {module: 4 + LORA_ERROR_RANK * (bits[module] == 4) for module in ranks}
    assert 4 + LORA_ERROR_RANK in ranks.values()
    # Bits per weight count the LoRA's bytes, FP16.
    lora_bytes = sum(2 * int(np.prod(init.dims)) for init in lora.values())
    assert manifest.bits_per_weight - manifest.bits_per_weight_without_adapter == pytest.approx(
        8 * lora_bytes / manifest.parameters, abs=2e-3)
    # Registered and answered in Foundry Local like any other build.
    register.register(out, "tiny-lora-in-graph")
    with LoadedModel("tiny-lora-in-graph") as model:
        generation = model.generate([{"role": "user", "content": "capital of France"}], max_tokens=4)
    # A random tiny model may pick its end token at any step: an answer is one token or more, ended by either.
    assert 1 <= generation.completion_tokens <= 4 and generation.finish_reason in ("stop", "length")


def test_by_default_the_side_branch_is_folded_into_its_bases_and_foundry_local_answers_it(
        tiny_model: Path, tmp_path: Path) -> None:
    """``folded-merge8``: over a 4-bit base B's rows join the base's MatMulNBits, over an 8-bit base the LoRA is merged."""
    import onnx

    from slmops.toolkit.runtimes.foundry import LoadedModel
    from slmops.toolkit.stages import register

    adapter = make_adapter(tiny_model, tmp_path / "support", target_modules=("q_proj", "v_proj", "down_proj"))
    out = tmp_path / "in-graph"
    assert cli.main(["convert", str(adapter), "--adapter-in-graph", "--precision", "int4", "--recipe", "mixed",
                     "--out", str(out)]) == 0
    manifest = read_manifest(out)
    branched = manifest.lora_branch
    assert (branched.layout, branched.branch_bits, branched.error_rank) == ("folded-merge8", 8, LORA_ERROR_RANK)
    assert branched.folded + branched.merged == branched.branches == 2 * 3 and branched.merged >= 2  # v is 8-bit
    assert manifest.parity.verdict == "pass"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert not [node for node in graph.node if node.op_type == "Add" and "lora" in node.name]
    concats = sum(node.op_type == "Concat" and node.name.endswith("/lora_concat") for node in graph.node)
    assert 0 < concats <= branched.folded  # one a group of folded branches reading one input
    register.register(out, "tiny-lora-folded")
    with LoadedModel("tiny-lora-folded") as model:
        generation = model.generate([{"role": "user", "content": "capital of France"}], max_tokens=4)
    assert 1 <= generation.completion_tokens <= 4 and generation.finish_reason in ("stop", "length")


def test_a_lora_in_the_graph_is_refused_where_it_cannot_apply_in_one_line(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = make_adapter(tiny_model, tmp_path / "support")
    out = tmp_path / "in-graph"
    capsys.readouterr()
    for argv, words in (([str(adapter), "--precision", "fp32"], "int4 or int8"),
                        ([str(adapter), "--keep-adapter"], "one graph holds one adapter"),
                        ([str(tiny_model)], "adapter folder")):
        assert cli.main(["convert", *argv, "--adapter-in-graph", "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "adapter_in_graph" in error and words in error, error
    assert not out.exists()


def test_the_recipe_comparison_measures_the_lora_in_the_graph_beside_the_merged_recipes(tiny_model: Path,
                                                                                       tmp_path: Path) -> None:
    from slmops.toolkit.core.errors import InvalidOptionError
    from slmops.toolkit.domain.options import INT4_RECIPES
    from slmops.toolkit.orchestration import recipes

    adapter = make_adapter(tiny_model, tmp_path / "support", target_modules=("q_proj", "v_proj", "down_proj"))
    assert recipes.recipe_names(adapter) == [*INT4_RECIPES, "mixed-lora"]
    assert recipes.recipe_names(tiny_model) == list(INT4_RECIPES)  # no LoRA to keep: the merged recipes only
    assert recipes.recipe_names(adapter, "olive") == list(INT4_RECIPES)  # the builder builds the LoRA branch
    # A retrained head only a merge applies: the comparison of that fine-tune builds the merged recipes only.
    assert recipes.recipe_names(make_adapter(tiny_model, tmp_path / "head", modules_to_save=["lm_head"])) == list(
        INT4_RECIPES)
    with pytest.raises(InvalidOptionError, match="mixed-lora"):
        recipes.compare_int4_recipes(tiny_model, tmp_path / "plain", tmp_path / "none", ["mixed-lora"], progress=False)
    merged_fp32 = tmp_path / "fp32"
    assert cli.main(["convert", str(adapter), "--precision", "fp32", "--out", str(merged_fp32)]) == 0
    merged, kept = recipes.compare_int4_recipes(adapter, tmp_path / "recipes", merged_fp32, ["mixed", "mixed-lora"],
                                                progress=False)
    assert (merged.recipe, kept.recipe) == ("mixed", "mixed-lora") and not merged.refused and not kept.refused
    assert "side branch" in kept.note and kept.decode_tps > 0 and 0 < kept.kl_divergence < 1.5
    made = read_manifest(tmp_path / "recipes" / "mixed-lora")
    assert made.adapter.kept_apart is True and made.adapter_files == () and made.options == read_manifest(
        tmp_path / "recipes" / "mixed").options
    assert kept.size_mb > merged.size_mb  # the LoRA's bytes are in the build
    # Shown beside the merged recipe with its own parity figure and bits per weight (the branch counted).
    assert kept.lora_in_graph and not merged.lora_in_graph and kept.bits_per_weight > merged.bits_per_weight > 0
    assert kept.parity_top1_agreement is not None and kept.parity_kl_divergence is not None
    assert recipes.recipe_choice.recommend_recipe([merged, kept])[0] == "mixed"


def test_a_fine_tune_that_trains_token_rows_keeps_its_lora_in_the_graph_over_a_base_holding_them(
        tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's fine-tune trains the rows of its two marker tokens (peft's trainable_token_indices)."""
    from transformers import AutoTokenizer

    from slmops.toolkit.domain.prompts import reference_text

    rows = sorted(set(AutoTokenizer.from_pretrained(tiny_model)(reference_text())["input_ids"][:40]))[-2:]
    adapter = make_adapter(tiny_model, tmp_path / "tokens", token_rows=rows)  # ids the parity check reads
    capsys.readouterr()
    assert cli.main(["convert", str(adapter), "--keep-adapter", "--precision", "fp32", "--out", str(tmp_path / "f")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "trains token rows" in error and "--adapter-in-graph" in error
    out = tmp_path / "in-graph"
    assert cli.main(["convert", str(adapter), "--adapter-in-graph", "--precision", "int8", "--out", str(out)]) == 0
    fp32_check, _ = read_manifest(out).parity.checks
    # The FP32 export with the LoRA in the graph matches the merge (LoRA and rows) exactly on ids holding those rows.
    assert fp32_check.max_diff_of_range <= parity.EXACT.max_diff_of_range and fp32_check.top1_agreement == 1.0
