"""Rotated INT4 (issue 25): the rotation changes nothing the FP32 graph computes, through the quantizer too."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.domain.genai_config import decoder_config
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.weights.quantize import quantize
from slmops.toolkit.weights.rotate import rotate
from tests.families import make_family_model

pytestmark = pytest.mark.slow  # each converts a tiny model (about 10 s)


def _fp32(tmp_path: Path, family: str) -> Path:
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    hf = make_family_model(tmp_path / "hf", family)
    return convert(ConvertSpec(hf, tmp_path / "fp32", Precision.FP32), progress=False).output_dir


@pytest.fixture(scope="module")
def qwen_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2.5 ties its table to the LM head and has qkv biases."""
    return _fp32(tmp_path_factory.mktemp("qwen2.5"), "qwen2.5")


def _copy_beside(fp32: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    for f in fp32.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, out / f.name)
    return out


@pytest.mark.parametrize(("family", "tied"), [("qwen2.5", True), ("mistral", False)])
def test_a_rotated_fp32_graph_computes_what_its_source_computes(family: str, tied: bool, qwen_fp32: Path,
                                                                tmp_path: Path) -> None:
    """The tied table stays shared (an FP32 MatMul before the head); Mistral ties nothing."""
    from slmops.toolkit.runtimes import genai

    fp32 = qwen_fp32 if family == "qwen2.5" else _fp32(tmp_path, family)
    out = _copy_beside(fp32, tmp_path / "rotated")
    decoder = decoder_config(fp32)
    done = rotate(fp32 / "model.onnx", out / "model.onnx", head_dim=decoder["head_size"],
                  value_columns=decoder["head_size"] * decoder["num_key_value_heads"])
    assert done.readers > 0 and done.writers > 0 and done.heads > 0
    assert done.tied_head is tied
    (found,) = genai.agreement(fp32, {"rotated": out})
    assert found.top1_agreement == 1.0 and found.kl_divergence < 1e-5, found


def test_a_rotated_int4_build_stays_close_and_leaves_no_scratch(qwen_fp32: Path, tmp_path: Path) -> None:
    """Through the quantizer (GPTQ, the plan rotation helps): the added FP32 MatMul before the tied LM
    head is kept in FP32, the table stays shared, and the rotated FP32 scratch is removed."""
    from slmops.toolkit.runtimes import genai

    fp32 = qwen_fp32
    plans = {"plain": QuantPlan(algorithm="gptq", lm_head_bits=8, embedding_bits=8),
             "rotated": QuantPlan(algorithm="gptq", lm_head_bits=8, embedding_bits=8, rotate=True)}
    folders = {}
    for name, plan in plans.items():
        folders[name] = _copy_beside(fp32, tmp_path / name)
        quantize(fp32 / "model.onnx", folders[name] / "model.onnx", plan)
    assert [f.name for f in folders["rotated"].iterdir() if f.name.startswith(".")] == []
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(folders["rotated"] / "model.onnx"),
                                                 load_external_data=False).graph.node}
    assert ops["/rotation/MatMul"] == "MatMul"  # FP32, not quantized with the body
    assert ops["/model/embed_tokens/Reshape"] == "Reshape"  # the embedding reads the LM head's int8 table
    found = {a.model: a for a in genai.agreement(fp32, folders)}
    # A broken rotation (a gain folded twice, a head rotated one way only) multiplies KL; a random
    # tiny model has no outlier channels to spread, so the two stay about equal.
    assert found["rotated"].kl_divergence < 1.5 * found["plain"].kl_divergence, found
    sizes = {name: sum(f.stat().st_size for f in folder.glob("model.onnx*")) for name, folder in folders.items()}
    assert sizes["rotated"] < 1.1 * sizes["plain"], sizes
    assert np.isfinite(found["rotated"].perplexity)


def test_rotating_a_model_it_cannot_rotate_is_a_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    from slmops.toolkit.core.errors import InputError

    fp32 = _fp32(tmp_path, "gemma3")
    out = _copy_beside(fp32, tmp_path / "int4")
    with pytest.raises(InputError, match="without rotate"):
        quantize(fp32 / "model.onnx", out / "model.onnx", QuantPlan(rotate=True))
    assert not (out / ".rotated-fp32").exists()
