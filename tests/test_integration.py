"""The bundled SmolLM2 model end to end: convert, register, answer, and INT4 decodes faster than FP32."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit import bench, convert, register
from toolkit.foundry import LoadedModel
from toolkit.models import inspect_source


@pytest.mark.slow
def test_bundled_model_is_a_real_hf_folder(bundled: Path) -> None:
    source = inspect_source(bundled)
    assert source.architecture == "LlamaForCausalLM" and source.context_length == 8192


@pytest.mark.slow
def test_bundled_fp32_and_int4_through_foundry(bundled: Path, tmp_path: Path) -> None:
    manifests = convert.convert_all(bundled, ["fp32", "int4"], tmp_path / "models", progress=False)
    ratio = manifests[1]["size_mb"] / manifests[0]["size_mb"]
    assert 0.2 < ratio < 0.5  # INT4 with the FP32 embedding table kept (SPEC: 0.37x)
    rows = register.register_all(tmp_path / "models" / "convert.json", "smol")
    assert [r["name"] for r in rows] == ["smol-fp32", "smol-int4"]
    with LoadedModel("smol-int4") as model:
        answer = model.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
    assert "Paris" in answer.text
    figures = bench.bench(["smol-fp32", "smol-int4"], prompt_lengths=[16], gen_tokens=24, repeats=2, progress=False)
    decode = {row.precision: row.decode_tps for row in figures}
    assert decode["int4"] > decode["fp32"]
