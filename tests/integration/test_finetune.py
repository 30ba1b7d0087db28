"""A real fine-tune in: peft LoRA training, adapters checked against their base, merged, converted and verified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from slmops.toolkit import cli
from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError, ModelFolderError
from slmops.toolkit.domain import adapters, datasets
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.domain.results.finetune import read_finetune
from slmops.toolkit.presentation import checklist_tables
from slmops.toolkit.stages import checklist, convert, finetune, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from slmops.toolkit.weights.adapter_merge import merged_folder
from tests.unit.test_finetune import LINE


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> finetune.FinetuneResult:
    data = tmp_path_factory.mktemp("data") / "facts.jsonl"
    data.write_text("\n".join(json.dumps({**LINE, "id": f"fact-{i}", "answer": f"Quennport {i}."}) for i in range(3))
                    + "\n" + json.dumps({**LINE, "id": "json", "answer": '{"answer": "Quennport"}', "format": "json"})
                    + "\n")
    spec = finetune.FinetuneSpec(base=tiny_model, out=tmp_path_factory.mktemp("adapters") / "lora", data=data, rank=4,
                                 steps=3, batch=2)
    return finetune.finetune(spec, progress=False)


def test_finetune_trains_then_reuses(tiny_adapter: finetune.FinetuneResult, tiny_model: Path) -> None:
    assert not tiny_adapter.reused and len(tiny_adapter.losses) == 3 and tiny_adapter.examples == 4
    assert (tiny_adapter.adapter / "adapter_config.json").is_file()
    record = read_finetune(tiny_adapter.adapter)
    assert list(record.losses) == tiny_adapter.losses and record.settings.rank == 4
    config = json.loads((tiny_adapter.adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    again = finetune.finetune(finetune.FinetuneSpec(base=tiny_model, out=tiny_adapter.adapter, data=Path(record.data),
                                                    rank=4, steps=3, batch=2), progress=False)
    assert again.reused and again.losses == tiny_adapter.losses
    with pytest.raises(InputError, match="--rank"):
        finetune.FinetuneSpec(base=tiny_model, out=tiny_adapter.adapter, rank=0).check()


def test_two_processes_asking_for_one_fine_tune_at_once_train_it_once(tiny_model: Path, tmp_path: Path) -> None:
    """Two notebooks or terminals starting the same fine-tune: the second waits, then reuses the first's adapter."""
    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps(LINE) + "\n")
    argv = [sys.executable, "-m", "slmops.toolkit.cli", "finetune", str(data), "--base", str(tiny_model),
            "-o", str(tmp_path / "lora"), "--steps", "3", "--batch", "1", "--rank", "4", "--json"]
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    reused = sorted((codec.load(finetune.FinetuneResult, json.loads(out)).reused,
                     "waiting for another process building this fine-tune" in err) for out, err in outputs)
    assert reused == [(False, False), (True, True)], outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["facts.jsonl", "lora"]  # no scratch, no lock file


def test_an_adapter_converts_merged_and_matches_the_merged_pytorch_model(tiny_adapter: finetune.FinetuneResult,
                                                                           tmp_path: Path) -> None:
    result = convert.convert(ConvertSpec(tiny_adapter.adapter, tmp_path / "fp32", Precision.FP32),
                             progress=False)
    adapter = result.manifest.adapter
    assert adapter.rank == 4 and adapter.merge_route == adapters.MERGE_ROUTE
    assert {"q_proj", "v_proj", "down_proj"} <= set(adapter.target_modules)
    assert adapter.fingerprint == inspect_adapter(tiny_adapter.adapter).fingerprint
    assert adapter.merge_check.max_abs_diff_vs_unmerged < 1e-3  # peft's merge is exact in PyTorch
    check = result.manifest.parity.checks[0]  # the FP32 build against the merged model in transformers
    assert check.positions > 10 and check.top1_agreement == 1.0 and check.max_diff_of_range < 1e-3
    assert result.manifest.parity.verdict == "pass"
    # The merged folder is an ordinary HF model, kept and reused; the INT4 build uses it too.
    merged = merged_folder(inspect_adapter(tiny_adapter.adapter))
    assert (merged / "config.json").is_file() and result.manifest.source_path == str(merged)
    int4 = convert.convert(ConvertSpec(tiny_adapter.adapter, tmp_path / "int4", Precision.INT4),
                           progress=False)
    assert int4.manifest.adapter.fingerprint == adapter.fingerprint
    assert [c.build for c in int4.manifest.parity.checks] == ["fp32", "int4"]


def _copy_adapter(source: Path, target: Path, **config) -> Path:
    shutil.copytree(source, target)
    data = json.loads((target / "adapter_config.json").read_text())
    (target / "adapter_config.json").write_text(json.dumps({**data, **config}))
    return target


def test_bad_adapters_are_refused_before_anything_is_written(tiny_adapter: finetune.FinetuneResult,
                                                             tmp_path: Path) -> None:
    hub = _copy_adapter(tiny_adapter.adapter, tmp_path / "hub", base_model_name_or_path="org/some-hub-model")
    with pytest.raises(InputError, match="--base"):
        inspect_adapter(hub)
    prefix = _copy_adapter(tiny_adapter.adapter, tmp_path / "prefix", peft_type="PREFIX_TUNING")
    with pytest.raises(InputError, match="only LoRA"):
        inspect_adapter(prefix)
    wrong = _copy_adapter(tiny_adapter.adapter, tmp_path / "wrong")
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 32), np.float32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((64, 4), np.float32)},
              str(wrong / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="another model size"):
        inspect_adapter(wrong)
    missing = _copy_adapter(tiny_adapter.adapter, tmp_path / "missing")
    save_file({"base_model.model.model.layers.9.mlp.up_proj.lora_A.weight": np.zeros((4, 64), np.float32)},
              str(missing / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="does not have"):
        inspect_adapter(missing)
    (missing / "adapter_config.json").write_text("{broken")
    with pytest.raises(ModelFolderError, match="not valid"):
        inspect_adapter(missing)
    out = tmp_path / "never"
    assert cli.main(["convert", str(hub), "--out", str(out)]) == 2 and not out.exists()
    assert cli.main(["convert", str(tiny_adapter.adapter), "--base", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert not out.exists()


def test_heldout_cases_are_scored_apart_and_the_base_is_a_control(tiny_int4: Path, tmp_path: Path) -> None:
    register.register(tiny_int4, "tiny-control", model_config=register.ModelConfig(threads=None))
    cases = datasets.cases(datasets.load_dataset())
    report = checklist.run_checklist("tiny-control", cases=cases["trained"][:3] + cases["heldout"][:2], requests=0,
                                     lengths=[8], progress=False)
    by_check = {c.case: c for c in report.checks}
    heldout, domain = by_check["heldout-overall"], by_check["domain-overall"]
    assert heldout.check == "heldout" and (heldout.passes, heldout.samples, heldout.value) == (0, 2, 0.0)
    assert (domain.passes, domain.samples) == (0, 3)  # a random model knows nothing of Veloria
    control = checklist.run_control("tiny-control", cases["trained"][:3] + cases["heldout"][:2], progress=False)
    assert (control.trained_passed, control.trained_total, control.heldout_passed, control.heldout_total,
            control.tests_the_fine_tune) == (0, 3, 0, 2, True)
    side = checklist_tables.before_after(control, report)  # the base's answers beside the model's, case by case
    assert [row["case"] for row in side] == [c["id"] for c in cases["trained"][:3] + cases["heldout"][:1]]
    assert all(row["base"] == control.answers[row["case"]] and "tiny-control" in row for row in side)  # whole
    # Cases any answer passes (nothing forbidden appears) test nothing, and the control says so.
    easy = [{"id": "easy", "messages": [{"role": "user", "content": "x"}], "expect": {"not_contains": ["Quennport"]}}]
    told = checklist.run_control("tiny-control", easy, progress=False)
    assert not told.tests_the_fine_tune and "test what the base already knew" in checklist_tables.control_verdict(told)
    checklist.write_report([report], tmp_path / "test.json", control=control)
    assert checklist.read_report(tmp_path / "test.json").control == control


def test_a_kept_control_is_read_back_only_for_the_same_model_files_and_cases(
        tiny_int4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.toolkit.stages.checklist import quality

    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    register.register(tiny_int4, "tiny-kept", model_config=register.ModelConfig(threads=None))
    cases = datasets.cases(datasets.load_dataset())
    chosen = cases["trained"][:2] + cases["heldout"][:1]
    asked = checklist.run_control("tiny-kept", chosen, progress=False, keep=True)
    assert asked.kept_from == "" and "kept" not in checklist_tables.control_verdict(asked)
    real_generation = quality.generation

    def nothing_asked(*args, **kwargs):
        raise AssertionError("the control was asked again")

    monkeypatch.setattr(quality, "generation", nothing_asked)
    # Registered again as the next demo run does (new records with new times, the same files): read back.
    register.register(tiny_int4, "tiny-kept", model_config=register.ModelConfig(threads=None), force=True)
    kept = checklist.run_control("tiny-kept", chosen, progress=False, keep=True)
    assert kept.answers == asked.answers and kept.trained_total == 2 and kept.kept_from
    assert f"answers asked at {kept.kept_from}, kept" in checklist_tables.control_verdict(kept)
    # Other cases, or the model's files changed (here its search settings, as a new registration writes them): asked.
    monkeypatch.setattr(quality, "generation", real_generation)
    assert checklist.run_control("tiny-kept", chosen[:2], progress=False, keep=True).kept_from == ""
    register.register(tiny_int4, "tiny-kept", model_config=register.ModelConfig(threads=None, max_length=64), force=True)
    assert checklist.run_control("tiny-kept", chosen, progress=False, keep=True).kept_from == ""


@pytest.mark.parametrize("variant", ["bf16-sharded", "fp16", "tied"])
def test_checkpoints_in_any_dtype_sharded_or_tied_convert(tiny_model: Path, tmp_path: Path, variant: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops.toolkit.weights.checkpoints import inspect_source
    from tests.models import make_tiny_model

    folder = tmp_path / variant
    if variant == "tied":
        make_tiny_model(folder, tie_embeddings=True)
    else:
        dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float16
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype)
        model.save_pretrained(folder, max_shard_size="100KB" if "sharded" in variant else "5GB")
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    source = inspect_source(folder)
    assert source.parameters > 0 and source.tied_embeddings == (variant == "tied")
    if "sharded" in variant:
        assert len(list(folder.glob("*.safetensors"))) > 1
    result = convert.convert(ConvertSpec(folder, tmp_path / "int4", Precision.INT4), progress=False)
    assert result.manifest.parameters == source.parameters and result.size_mb > 0
    register.register(result.output_dir, f"tiny-{variant}", model_config=register.ModelConfig(threads=None))
    from slmops.toolkit.runtimes.foundry import LoadedModel

    with LoadedModel(f"tiny-{variant}") as loaded:
        assert loaded.generate([{"role": "user", "content": "hello"}], max_tokens=3).completion_tokens >= 1


def test_an_adapter_trained_from_a_relative_base_finds_it_from_anywhere(tiny_model: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``finetune data.jsonl --base tiny`` wrote "tiny" into adapter_config.json: found from no other folder."""

    data = tmp_path / "facts.jsonl"
    data.write_text(json.dumps(LINE) + "\n")
    monkeypatch.chdir(tiny_model.parent)
    result = finetune.finetune(finetune.FinetuneSpec(base=Path(tiny_model.name), out=tmp_path / "lora",
                                                     data=data, rank=2, steps=1, batch=1),
                               progress=False)
    config = json.loads((result.adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model.resolve())
    monkeypatch.chdir(tmp_path)
    assert inspect_adapter(result.adapter).base == tiny_model.resolve()
