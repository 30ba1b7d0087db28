"""Input-folder faults that used to surface only after the build, each refused by ``convert``'s checks first.

Each kind below was made as the smallest input (the tiny model with one field or file changed) and converted
on the code before these checks: all but the ones marked "silently" failed after the build had started (in
the model builder once it had loaded the model, or in the parity check after the whole build); the "silently"
ones converted, and the build dropped weights or could never stop generating. Each is now refused by
:func:`~slmops.toolkit.stages.convert_checks.validate` (what ``slmops convert`` runs first) in one line that names
the field or file to fix. The configs of the real families (``tests/families.py``) and of real shapes still pass.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.stages.convert_checks import validate
from slmops.toolkit.stages.convert_plan import ConvertSpec
from tests.families import FAMILIES, make_family_model
from tests.unit.test_bad_input import refused

DROP = object()


def _edit(name: str, **changes: object) -> Callable[[Path], None]:
    """A change to one JSON file of the folder (``DROP`` removes a field)."""
    def change(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        for key, value in changes.items():
            data.pop(key, None) if value is DROP else data.__setitem__(key, value)
        (folder / name).write_text(json.dumps(data))
    return change


def _config(**changes: object) -> Callable[[Path], None]:
    return _edit("config.json", **changes)


def _both(**changes: object) -> Callable[[Path], None]:
    """The same fields in config.json and generation_config.json."""
    return lambda folder: (_config(**changes)(folder), _edit("generation_config.json", **changes)(folder))


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        change(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return edit


def _add(name: str, size: int) -> Callable[[Path], None]:
    import torch

    return _tensors(lambda state: state.__setitem__(name, torch.zeros(size)))


def _shards_one_missing(folder: Path) -> None:
    """Two shards and their index, the MLPs in the second, which is then lost (an interrupted download)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    index = {}
    for number, names in enumerate(([n for n in state if ".mlp." not in n], [n for n in state if ".mlp." in n]), 1):
        file = f"model-0000{number}-of-00002.safetensors"
        save_file({n: state[n] for n in names}, str(folder / file), metadata={"format": "pt"})
        index |= dict.fromkeys(names, file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (folder / "model-00002-of-00002.safetensors").unlink()


def _bigger_tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(120)], special_tokens=True)  # past the 400 rows
    tokenizer.save_pretrained(folder)


_LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8, "rope_theta": 10000.0,
             "original_max_position_embeddings": 128}

#: Kind -> (the change, words the refusal names, how the code before these checks failed).
KINDS: dict[str, tuple[Callable[[Path], None], tuple[str, ...], str]] = {
    "rope_theta null": (_config(rope_parameters={"rope_type": "default", "rope_theta": None}),
                        ("rope_theta None",), "builder: float() argument must be ... not 'NoneType'"),
    "max_position_embeddings null": (_config(max_position_embeddings=None), ("max_position_embeddings",),
                                     "builder: Field 'max_position_embeddings' expected int"),
    "rms_norm_eps null": (_config(rms_norm_eps=None), ("rms_norm_eps",), "builder: Field 'rms_norm_eps' expected float"),
    "head_dim apart from the weights": (_config(head_dim=32), ("head_dim", "k_proj"),
                                        "builder: ignore_mismatched_sizes ... raising an error"),
    "num_key_value_heads apart from the weights": (_config(num_key_value_heads=4), ("num_key_value_heads",),
                                                   "builder: ignore_mismatched_sizes ... raising an error"),
    "num_key_value_heads not dividing the heads": (_config(num_key_value_heads=3), ("num_key_value_heads 3",
                                                   "num_attention_heads 4"),
                                                   "parity reference: size of tensor a (4) must match ... (3)"),
    "hidden_size not splitting into heads": (_config(head_dim=None, num_attention_heads=6), ("head_dim",
                                             "hidden_size 64"), "builder: unsupported operand ... NoneType"),
    "intermediate_size apart from the weights": (_config(intermediate_size=256), ("intermediate_size", "[64, 128]"),
                                                 "builder: ignore_mismatched_sizes ... raising an error"),
    "vocab_size missing": (_config(vocab_size=DROP), ("vocab_size", "151936"),
                           "builder: ignore_mismatched_sizes ... raising an error"),
    "num_hidden_layers missing": (_config(num_hidden_layers=DROP), ("num_hidden_layers", "layer_types"),
                                  "builder: num_hidden_layers (32) must be equal to ... layer_types (2)"),
    "LongRoPE without its type": (_config(rope_parameters=_LONGROPE), ('"type": "longrope"',),
                                  "builder: KeyError: 'type'"),
    "a RoPE type transformers does not know": (_config(rope_parameters={"rope_type": "bogus", "rope_theta": 1e4}),
                                               ("'bogus'",), "builder: KeyError: 'bogus'"),
    "sliding layers without a window": (_config(use_sliding_window=True, sliding_window=None,
                                                layer_types=["sliding_attention"] * 2), ("sliding_window",),
                                        "parity reference: 'NoneType' object cannot be interpreted as an integer"),
    "architectures missing": (_config(architectures=DROP), ('["Qwen2ForCausalLM"]',),
                              "refused, naming Architecture 'unknown' as unsupported"),
    "model_type missing": (_config(model_type=DROP), ("model_type",), "builder: Unrecognized model"),
    "model_type unknown": (_config(model_type="foo"), ("model type `foo`",), "builder: model type `foo` ..."),
    "model_type of another family": (_config(model_type="llama"), ('"model_type": "qwen2"',),
                                     "silently: built as Llama, the Q/K/V biases dropped"),
    "a shard the index names is missing": (_shards_one_missing, ("model-00002-of-00002.safetensors",),
                                           "builder: FileNotFoundError"),
    "an unreadable shard index": (lambda folder: (_shards_one_missing(folder),
                                                  _write("model.safetensors.index.json", "{")(folder)),
                                  ("model.safetensors.index.json",), "builder: JSONDecodeError"),
    "a bias the config has no place for": (_add("model.layers.0.self_attn.o_proj.bias", 64),
                                           ("o_proj.bias", "attention_bias"), "silently: the bias dropped"),
    "a tensor the architecture has no place for": (_add("model.layers.0.mlp.gate_proj.scales", 128),
                                                   ("gate_proj.scales", "dropped"), "silently: dropped"),
    "a tensor the architecture needs is missing": (_tensors(lambda state: state.pop("model.layers.1.mlp.up_proj.weight")),
                                                   ("up_proj.weight", "random numbers"),
                                                   "parity check failed (top-1 0.70) after the build"),
    "tokenizer larger than the embedding table": (_bigger_tokenizer, ("520 tokens", "vocab_size is 400",
                                                                      "resize_token_embeddings"),
                                                  "silently: ids 400 up index past the table"),
    "tokenizer.json unreadable": (_write("tokenizer.json", "{not json"), ("tokenizer",),
                                  "builder: JSONDecodeError"),
    "tokenizer_config.json unreadable": (_write("tokenizer_config.json", "{"), ("tokenizer",),
                                         "builder: JSONDecodeError"),
    "generation_config.json unreadable": (_write("generation_config.json", "{bad"), ("generation_config.json",),
                                          "silently: skipped, its stop tokens with it"),
    "generation_config.json a list": (_write("generation_config.json", "[1, 2]"), ("generation_config.json", "list"),
                                      "builder: 'list' object is not a mapping"),
    "eos_token_id past the vocabulary": (_both(eos_token_id=1000), ("eos_token_id is 1000", "below 400"),
                                         "silently: generation could never stop"),
    "an eos list with an id past the vocabulary": (_both(eos_token_id=[2, 5000]), ("eos_token_id is [2, 5000]",),
                                                   "silently"),
    "pad_token_id past the vocabulary": (_both(pad_token_id=999), ("pad_token_id is 999",),
                                         "builder: Padding_idx must be within num_embeddings"),
    "bos_token_id past the vocabulary": (_both(bos_token_id=999), ("bos_token_id is 999",), "silently"),
    "eos_token_id a string": (_both(eos_token_id="2"), ("eos_token_id is '2'",),
                              "builder: Field 'eos_token_id' ... expected int, got str"),
    "an empty quantization_config": (_config(quantization_config={}), ("quantization_config",),
                                     "builder: KeyError: 'quant_method'"),
    "an activation the builder does not build": (_config(hidden_act="quick_gelu"), ("hidden_act 'quick_gelu'",),
                                                 "builder: The quick_gelu activation function is not supported"),
    "an activation transformers does not know": (_config(hidden_act="foo"), ("'foo'",), "builder: KeyError: 'foo'"),
}


def _faulty(tiny_model: Path, target: Path, change: Callable[[Path], None]) -> Path:
    shutil.copytree(tiny_model, target)
    change(target)
    return target


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_fault_the_build_met_late_is_refused_before_any_work(tiny_model: Path, tmp_path: Path, kind: str) -> None:
    change, words, _before = KINDS[kind]
    model = _faulty(tiny_model, tmp_path / "m", change)
    with pytest.raises(InputError) as refusal:
        validate(ConvertSpec(model, tmp_path / "out"), memory_check=False)
    line = str(refusal.value)
    assert "\n" not in line and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["num_key_value_heads apart from the weights",
                                  "a tensor the architecture needs is missing", "tokenizer.json unreadable"])
def test_the_cli_refuses_in_one_line_with_exit_2_and_writes_nothing(tiny_model: Path, tmp_path: Path,
                                                                     kind: str) -> None:
    change, words, _before = KINDS[kind]
    model = _faulty(tiny_model, tmp_path / "m", change)
    refused(["convert", str(model), "--precision", "int4", "--out", str(tmp_path / "out")], *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


#: Inputs that look odd but convert (each converted and passed its parity check on the code before these checks).
FINE = {
    "pad_token_id null": _both(pad_token_id=None),
    "bos_token_id missing": _both(bos_token_id=DROP),
    "max_position_embeddings missing (the family's default)": _config(max_position_embeddings=DROP),
    "rope_parameters missing": _config(rope_parameters=DROP),
    "tied, no lm_head stored": lambda folder: (_config(tie_word_embeddings=True)(folder), _tensors(
        lambda state: state.pop("lm_head.weight"))(folder)),
    "no chat template": lambda folder: ((folder / "chat_template.jinja").unlink(missing_ok=True),
                                        _edit("tokenizer_config.json", chat_template=DROP)(folder)),
    "a sliding window on the second layer": _config(use_sliding_window=True, sliding_window=16, max_window_layers=1,
                                                    layer_types=["full_attention", "sliding_attention"]),
    "yarn RoPE": _config(rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                                          "rope_theta": 10000.0}),
}


@pytest.mark.parametrize("kind", list(FINE))
def test_odd_but_sound_inputs_still_pass(tiny_model: Path, tmp_path: Path, kind: str) -> None:
    validate(ConvertSpec(_faulty(tiny_model, tmp_path / "m", FINE[kind]), tmp_path / "out"), memory_check=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_familys_real_config_passes(tmp_path: Path, family: str) -> None:
    model = make_family_model(tmp_path / family, family)
    assert validate(ConvertSpec(model, tmp_path / "out"), memory_check=False).path == model.resolve()


def test_a_run_refuses_a_model_without_a_chat_template_before_its_first_notebook(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: notebook 01 converted the model, then 02's registration (template ``auto``, the default) failed on
    ``The model has no chat template``."""
    import papermill

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("a notebook started")

    monkeypatch.setattr(papermill, "execute_notebook", started)
    model = _faulty(tiny_model, tmp_path / "m", FINE["no chat template"])
    line = refused(["run", "--set", f"model_dir={model}", "--set", "finetune=false", "-o", str(tmp_path / "run")],
                   "no chat template", "--template")
    assert "notebook" not in line and not (tmp_path / "run").exists()
