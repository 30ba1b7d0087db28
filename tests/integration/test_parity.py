"""The parity gate: every build is compared with transformers on the same token ids, and kept only when it matches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import ParityError
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.domain.results.conversion import read_manifest, write_manifest
from slmops.toolkit.orchestration import doctor
from slmops.toolkit.stages import convert
from slmops.toolkit.stages.convert_plan import ConvertSpec, builder_command
from tests.models import make_tiny_model


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's twin with other weights: what a wrong build computes, as far as parity can tell."""
    return make_tiny_model(tmp_path_factory.mktemp("other") / "qwen2", seed=1)


def test_a_build_that_differs_from_its_source_is_refused(tiny_model: Path, other_model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault injected around the builder: it is handed other weights than the source's."""
    real = builder_command
    monkeypatch.setattr(convert, "builder_command", lambda spec, out, cache, *rest: real(
        ConvertSpec(other_model, spec.output_dir, spec.precision), out, cache, *rest))
    target = tmp_path / "models" / "fp32"
    with pytest.raises(ParityError) as caught:
        convert.convert(ConvertSpec(tiny_model, target, Precision.FP32), progress=False)
    message = str(caught.value)
    assert "Qwen2ForCausalLM" in message and "top-1 agreement" in message and "Nothing was put in place" in message
    assert "\n" not in message
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []


def test_a_build_is_kept_with_its_figures(tiny_model: Path, tmp_path: Path) -> None:
    result = convert.convert(ConvertSpec(tiny_model, tmp_path / "int8", Precision.INT8), progress=False)
    gate = result.manifest.parity
    assert gate.verdict == "pass"
    fp32, int8 = gate.checks  # the FP32 model the quantizer started from, then the build itself
    assert (fp32.build, int8.build) == ("fp32", "int8")
    assert fp32.top1_agreement == 1.0 and fp32.max_diff_of_range < 1e-3
    assert int8.kl_divergence < 0.01 and fp32.positions == int8.positions > 100
    assert result.manifest.memory.measured_steps["parity"] > 0
    shown = doctor.parity_check(result.output_dir)  # doctor shows the figures, and fails a failed record
    assert shown.ok and "int8 pass: top-1 agreement" in shown.detail
    manifest = read_manifest(result.output_dir)
    write_manifest(result.output_dir, replace(manifest, parity=replace(manifest.parity, verdict="fail")))
    assert not doctor.parity_check(result.output_dir).ok
    assert "not checked" in doctor.parity_check(tmp_path).detail


def test_each_phase_of_the_check_runs_alone_and_the_gate_records_its_peak(tiny_model: Path, tmp_path: Path) -> None:
    """The reference, the FP32 model (ONNX Runtime, weights as written) and the build (GenAI): one child each."""
    result = convert.convert(ConvertSpec(tiny_model, tmp_path / "int8", Precision.INT8), progress=False)
    gate = result.manifest.parity
    steps = gate.steps_mib
    assert set(steps) == {"fp32 (onnxruntime)", "int8 (onnxruntime-genai)"} | (
        {"reference (transformers)"} if "reference (transformers)" in steps else set())  # the reference may be cached
    assert result.manifest.memory.measured_steps["parity"] == max(steps.values())
    assert {check.build: check.top1_agreement for check in gate.checks}["fp32"] == 1.0


@pytest.mark.parametrize("family", ["gemma3", "phi3", "qwen2.5"])
def test_a_16_bit_checkpoint_is_computed_in_fp32_as_stored_with_the_logits_of_an_fp32_load(family: str,
                                                                                         tmp_path: Path) -> None:
    """Weights rest as stored (bf16) and are upcast a module at a time: not one logit differs from loading in FP32."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from slmops.toolkit.runtimes import reference_model
    from slmops.toolkit.runtimes.reference_jobs import ParityJob
    from tests.families import make_family_model

    model = make_family_model(tmp_path / family, family)
    for file in model.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text()) | {"dtype": "bfloat16"}
    (model / "config.json").write_text(json.dumps(config))
    job = ParityJob(str(model), "The capital of France is Paris. " * 20, "float32", "", {})
    _name, seqs, got = reference_model.reference_logits(job, lambda event: None)
    fp32 = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        for (_what, ids), logits in zip(seqs, got, strict=True):
            assert np.array_equal(logits, fp32(torch.tensor([ids])).logits[0].numpy())
