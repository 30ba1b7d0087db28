"""The bundled SmolLM2 model end to end: convert, register, answer, and INT4 decodes faster than FP32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest

from slmops.toolkit.domain.sources import inspect_source
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages import bench, convert, register


class Builds(NamedTuple):
    folder: Path  # fp32/, int4/ and convert.json
    manifests: list


@pytest.fixture(scope="module")
def fp32_int4(bundled: Path, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """The bundled model converted at FP32 and INT4 once for this module (each build passed its parity gate)."""
    models = tmp_path_factory.mktemp("bundled") / "models"
    return Builds(models, convert.convert_all(bundled, ["fp32", "int4"], models, progress=False))


@pytest.mark.slow
def test_bundled_model_is_a_real_hf_folder(bundled: Path) -> None:
    source = inspect_source(bundled)
    assert source.architecture == "LlamaForCausalLM" and source.context_length == 8192


@pytest.mark.slow
def test_bundled_fp32_and_int4_through_foundry(fp32_int4: Builds) -> None:
    manifests = fp32_int4.manifests
    ratio = manifests[1]["size_mb"] / manifests[0]["size_mb"]
    assert 0.2 < ratio < 0.5  # INT4 with the FP32 embedding table kept (SPEC: 0.37x)
    rows = register.register_all(fp32_int4.folder / "convert.json", "smol")
    assert [r["name"] for r in rows] == ["smol-fp32", "smol-int4"]
    with LoadedModel("smol-int4") as model:
        answer = model.generate([{"role": "user", "content": "What is the capital of France?"}], max_tokens=16)
    assert "Paris" in answer.text
    figures = bench.bench(["smol-fp32", "smol-int4"], prompt_lengths=[16], gen_lengths=[24], repeats=2, progress=False)
    decode = {row.precision: row.decode_tps for row in figures if row.engine == "foundry-local"}
    assert decode["int4"] > decode["fp32"]


@pytest.mark.slow
def test_bundled_int8_and_int4_answer_and_the_prompt_matches_the_preview(bundled: Path, fp32_int4: Builds,
                                                                         tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from slmops.toolkit.domain import templates

    int8 = convert.convert(convert.ConvertSpec(bundled, tmp_path / "int8" / "int8", convert.Precision.INT8,
                                               quantize_from=fp32_int4.folder / "fp32"), progress=False)
    assert int8.manifest["weights"]["parameters"].keys() == {"int8"} and "quantized_from" in int8.manifest
    assert int8.manifest["size_ratio_vs_fp32"] < 0.3  # estimated FP32: 134.5M parameters x 4 bytes
    tokenizer = Tokenizer.from_file(str(bundled / "tokenizer.json"))
    messages = [{"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "What is the capital of France?"}]
    for folder, name in [(tmp_path / "int8" / "int8", "smol8"), (fp32_int4.folder / "int4", "smol4p")]:
        reg = register.register(folder, name)  # auto: the model's own template, derived strings
        preview = templates.render(reg_strings(reg.path), messages)
        with LoadedModel(name) as model:
            answer = model.generate(messages, max_tokens=16, temperature=0)
        assert "Paris" in answer.text
        assert answer.prompt_tokens == len(tokenizer.encode(preview, add_special_tokens=False).ids)
        # A different template would have been told apart: ChatML and Phi-3 differ in length here.
        other = templates.render(templates.PRESETS[templates.Template.PHI3], messages)
        assert len(tokenizer.encode(other, add_special_tokens=False).ids) != answer.prompt_tokens
        assert register.register(folder, name).model_id == f"{name}:1"  # re-register in place
        register.unregister(name)
        assert name not in {row["name"] for row in register.list_models()}


def reg_strings(folder: Path):
    from slmops.toolkit.domain.templates import PromptTemplate

    return PromptTemplate(**json.loads((folder / "inference_model.json").read_text())["PromptTemplate"])


@pytest.mark.slow
def test_checklist_passes_the_bundled_int4_and_fails_a_scrambled_copy(fp32_int4: Builds, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from slmops.toolkit.stages import checklist as evaluate

    scrambled = tmp_path / "scrambled"
    shutil.copytree(fp32_int4.folder / "int4", scrambled)
    data = np.fromfile(scrambled / "model.onnx.data", dtype=np.uint8)
    np.random.default_rng(0).shuffle(data)  # same bytes, wrong places: weights and scales garbage
    data.tofile(scrambled / "model.onnx.data")
    register.register_all(fp32_int4.folder / "convert.json", "chk")
    register.register(scrambled, "chk-scrambled")
    verdicts = {}
    for name in ("chk-int4", "chk-scrambled"):
        result = evaluate.run_checklist(name, requests=0, lengths=[], reference="chk-fp32", progress=False)
        verdicts[name] = {(c.check, c.case): c.passed for c in result.checks}
        assert all(passed for (check, _), passed in verdicts[name].items() if check == "edge")  # alive, clear
    good, bad = verdicts["chk-int4"], verdicts["chk-scrambled"]
    assert good["domain", "domain-overall"] and good["quality", "top1-agreement"] and good["quality", "kl-divergence"]
    assert not bad["domain", "domain-overall"]
    # Constrained decoding cannot steer garbage weights either: the runtime gives up, and the case fails.
    assert good["structured", "structured-overall"] and not bad["structured", "structured-overall"]
    assert not bad["quality", "top1-agreement"] and not bad["quality", "kl-divergence"]
