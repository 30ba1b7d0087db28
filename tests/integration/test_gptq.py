"""GPTQ-calibrated INT4 (issue 25): ORT's grid and layout, lower output error than round-to-nearest, end to end."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from slmops.toolkit.domain.options import Int4Algorithm, Int4Options, Precision
from slmops.toolkit.domain.quant_plan import QuantPlan
from slmops.toolkit.weights import calibration
from slmops.toolkit.weights.quantize import quantize


def test_gptq_build_is_closer_to_fp32_than_round_to_nearest_at_the_same_plan(tiny_fp32: Path, tmp_path: Path) -> None:
    from slmops.toolkit.runtimes import genai

    plans = {"rtn": QuantPlan(lm_head_bits=8, embedding_bits=8, mix="v-all-down-more-bits")}
    plans["gptq"] = QuantPlan(**{**plans["rtn"].__dict__, "algorithm": "gptq"})
    # Blocks of 128 over the tiny model's 64 inputs: GPTQ pads the last block as ONNX Runtime does.
    plans["gptq-128"] = QuantPlan(algorithm="gptq", block_size=128, lm_head_bits=32)
    folders = {}
    for name, plan in plans.items():
        out = tmp_path / name
        out.mkdir()
        for f in tiny_fp32.iterdir():
            if f.is_file() and not f.name.startswith("model.onnx"):
                shutil.copy2(f, out / f.name)
        quantize(tiny_fp32 / "model.onnx", out / "model.onnx", plan)
        folders[name] = out
        # The quantizer silences ONNX Runtime's INFO log while it runs, never the process's after it.
        assert logging.root.manager.disable == logging.NOTSET
    # The calibration set is the bundled fine-tune's dataset, in the model's chat template.
    sequences = calibration.calibration_ids(tiny_fp32)
    assert len(sequences) > 20 and all(sequences)
    found = {a.model: a for a in genai.agreement(tiny_fp32, folders)}
    assert found["gptq"].kl_divergence < found["rtn"].kl_divergence, found
    assert found["gptq-128"].top1_agreement > 0.8, found  # before the padding: IndexError while quantizing


@pytest.mark.slow
def test_algorithm_gptq_reaches_the_quantizer_through_convert(tiny_model: Path, tmp_path: Path) -> None:
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec, quant_plan

    options = Int4Options(algorithm=Int4Algorithm.GPTQ, lm_head="int8", embeddings="int8", mix="v-all-down-more-bits")
    assert not options.builder_native
    assert quant_plan(ConvertSpec(tiny_model, tmp_path, Precision.INT4, int4=options)).algorithm == "gptq"
    built = convert(ConvertSpec(tiny_model, tmp_path / "gptq", Precision.INT4, int4=options), progress=False)
    assert built.manifest.quantizer.algorithm == "gptq" and built.manifest.parity.verdict == "pass"
