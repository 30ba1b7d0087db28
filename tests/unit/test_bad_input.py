"""Bad input a new user produces by accident: each kind refused before any work in one line that names
the input, the field or case and the fix (exit 2), or handled correctly. Tiny models; nothing converted or registered
here (the one that registers a real build is in ``tests/integration/test_bad_input.py``)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InconsistentCheckpointError, InputError, TemplateError
from slmops.toolkit.domain import jinja_render, sources, template_resolve, templates
from slmops.toolkit.stages import checklist
from slmops.toolkit.stages.convert_checks import validate
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.weights import checkpoints, context_limit
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from tests.integration.test_hostile import snapshot
from tests.unit.test_adapters import make_adapter


def run(argv: list[str]) -> tuple[int, str, str]:
    """``slmops ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str], *words: str) -> str:
    """Run ``argv``; assert exit 2 with one line on stderr holding ``words`` and no "unexpected error"; the line."""
    code, _, err = run(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "unexpected error" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err.strip()


def model_copy(tiny_model: Path, target: Path, **config: object) -> Path:
    """A copy of the tiny model with ``config.json`` fields replaced (``None`` removes one)."""
    shutil.copytree(tiny_model, target)
    fields = json.loads((target / "config.json").read_text())
    fields.update(config)
    (target / "config.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    return target


# --- 1. a config dtype the weights are not in ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "int8", "floot32", 16])
def test_a_config_dtype_the_weights_are_not_in_is_refused_before_the_build(tiny_model: Path, tmp_path: Path,
                                                                           dtype: object) -> None:
    """Was: the builder failed with ``TypeError: couldn't find storage object Float8_e4m3fnStorage``."""
    model = model_copy(tiny_model, tmp_path / "m", dtype=dtype, torch_dtype=None)
    out = tmp_path / "out"
    line = refused(["convert", str(model), "--out", str(out)], "dtype", repr(dtype), '"dtype": "float32"')
    assert "F32" in line and not out.exists()


def test_a_config_dtype_the_weights_load_in_is_accepted(tiny_model: Path, tmp_path: Path) -> None:
    for dtype in ("bfloat16", "float16", "auto", "torch.float32"):
        shutil.rmtree(tmp_path / "m", ignore_errors=True)
        assert checkpoints.inspect_source(model_copy(tiny_model, tmp_path / "m", torch_dtype=dtype)).hidden_size == 64


# --- 2. an --out inside a file ---------------------------------------------------------------------------------------


def test_an_out_inside_a_file_is_refused_in_one_line_for_every_command(tiny_model: Path, tmp_path: Path) -> None:
    """Was: ``unexpected error: FileExistsError`` (or ``NotADirectoryError``), "please report it"."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "q?", "answer": "a.", "paraphrase": "q2?", "expect": ["a"]}) + "\n")
    before = snapshot(tmp_path)
    for out in (blocker / "sub" / "out", blocker / "out"):
        refused(["convert", str(tiny_model), "--out", str(out)], f"is inside {blocker}, which is a file")
        refused(["finetune", str(data), "--base", str(tiny_model), "--out", str(out)], "which is a file")
        refused(["recipes", str(tiny_model), "--reference", str(tmp_path), "--out", str(out)], "which is a file")
    refused(["convert", str(tiny_model), "--out", str(blocker)], f"--out {blocker} is a file, not a folder")
    assert snapshot(tmp_path) == before


# --- 3. genai_config.json's context_length past the positions the model was built for --------------------------------


@pytest.fixture
def onnx_folder(tiny_model: Path, tmp_path: Path) -> Path:
    return fake_onnx_folder(tiny_model, tmp_path / "onnx")


def fake_onnx_folder(tiny_model: Path, folder: Path) -> Path:
    """A converted model's files as far as registration and doctor read them before loading: a graph holding a
    512-row rotary table (nothing else), its genai_config.json and the tiny model's tokenizer."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir()
    table = helper.make_tensor("cos_cache", TensorProto.FLOAT, [512, 8], [0.0] * 512 * 8)
    graph = helper.make_graph([helper.make_node("Identity", ["cos_cache"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [512, 8])], [table])
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"))
    (folder / "genai_config.json").write_text(json.dumps({
        "model": {"type": "qwen2", "context_length": 512, "eos_token_id": 2, "vocab_size": 400,
                  "decoder": {"filename": "model.onnx", "session_options": {}}},
        "search": {"max_length": 512}}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(tiny_model / name, folder / name)
    return folder


def set_context(folder: Path, context: object) -> None:
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["context_length"] = context
    (folder / "genai_config.json").write_text(json.dumps(config))


def test_a_context_length_past_the_models_positions_is_refused_by_register_and_failed_by_doctor(
        onnx_folder: Path, cache: Path) -> None:
    """Was: registered with exit 0, doctor all ok; a long prompt then got a raw ONNX Runtime error or a 500."""
    assert context_limit.context_problem(onnx_folder, json.loads((onnx_folder / "genai_config.json").read_text())) == ""
    set_context(onnx_folder, 131072)
    before = snapshot(cache)
    refused(["register", str(onnx_folder), "--name", "too-long"], "context_length 131072", "512 positions",
            "set context_length to 512")
    assert snapshot(cache) == before
    code, out, _ = run(["doctor", str(onnx_folder), "--no-load"])
    assert code == 1 and "FAIL  context length: genai_config.json says model.context_length 131072" in out
    set_context(onnx_folder, "4k")
    refused(["register", str(onnx_folder), "--name", "too-long"], "context_length is '4k'")


def case(case_id: str, content: str = "What is 2+2?", **extra: object) -> str:
    return json.dumps({"id": case_id, "messages": [{"role": "user", "content": content}],
                       "expect": {"contains_any": ["4"]}, **extra})


@pytest.mark.parametrize(("lines", "words"), [
    ([case("sum"), case("other"), case("sum")], ["cases.jsonl:3", "'sum'", "already used by line 1"]),
    ([case("sum"), case("empty", "")], ["cases.jsonl:2", "case 'empty'", "the prompt is empty"]),
    ([case("blank", " \n\t ")], ["cases.jsonl:1", "case 'blank'", "the prompt is empty"]),
    ([json.dumps({"id": "tool", "type": "tool_call", "messages": [{"role": "user", "content": ""}],
                  "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                  "expect": {"no_call": True}})], ["cases.jsonl:1", "case 'tool'", "the prompt is empty"]),
    ([case("sum"), json.dumps({"id": 7, "messages": [{"role": "user", "content": "hi"}]})],
     ["cases.jsonl:2", "'id' must be a non-empty string"]),
])
def test_a_cases_file_is_checked_whole_before_the_first_case(tmp_path: Path, lines: list[str],
                                                             words: list[str]) -> None:
    """Was: a duplicated id accepted (one result overwrote the other); an empty prompt stopped the run midway with
    "The prompt is empty", naming neither case nor line."""
    file = tmp_path / "cases.jsonl"
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as raised:
        checklist.load_cases(file)
    assert "\n" not in str(raised.value)
    for word in words:
        assert word in str(raised.value)
    refused(["test", "no-such-model", "--cases", str(file)], *words)


# --- 5. chat templates rendered with limits ---------------------------------------------------------------------------

RECURSIVE = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
EXPENSIVE = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(("source", "words"), [
    (RECURSIVE, "nests calls more than 64 deep"),
    (EXPENSIVE, "ran past 0.5 s"),
    ("{{ 'x' * 20000000 }}", "more than 10,000,000 characters"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ messages[0]['content'] + 1 }}", "TypeError"),
])
def test_template_rendering_stops_at_its_limits_in_one_line(source: str, words: str) -> None:
    """Was: ``unexpected error: RecursionError``; an expensive template hung register and doctor."""
    started = time.monotonic()
    with pytest.raises(TemplateError, match=words) as raised:
        jinja_render.render_jinja(source, [{"role": "user", "content": "hi"}], seconds=0.5)
    assert time.monotonic() - started < 10 and "\n" not in str(raised.value)
    # The limits leave nothing behind: the next rendering is unaffected.
    assert jinja_render.render_jinja(sources.CHATML_TEMPLATE, [{"role": "user", "content": "hi"}]).endswith("assistant\n")


@pytest.mark.parametrize("source", [RECURSIVE, EXPENSIVE])
def test_register_and_doctor_refuse_a_runaway_template_in_one_line(onnx_folder: Path, cache: Path, source: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jinja_render, "RENDER_SECONDS", 1.0)  # the limit every rendering has, shortened for the test
    config = json.loads((onnx_folder / "tokenizer_config.json").read_text())
    (onnx_folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
    (onnx_folder / "chat_template.jinja").write_text(source)
    before = snapshot(cache)
    started = time.monotonic()
    refused(["register", str(onnx_folder), "--name", "runaway"], "chat template cannot be rendered", "--template")
    assert snapshot(cache) == before
    code, out, err = run(["doctor", str(onnx_folder), "--no-load"])
    assert code == 1 and "FAIL  chat template" in out + err and "unexpected" not in out + err
    assert time.monotonic() - started < 30


# --- 6. tie_word_embeddings true over a stored head of its own ------------------------------------------------------


def test_a_tied_flag_over_a_stored_head_that_differs_is_refused_before_the_build(tiny_model: Path,
                                                                               tmp_path: Path) -> None:
    """LlamaFactory#10560. Was: a full build, then the parity gate's refusal blaming the builder. transformers 5
    keeps the stored head (it does not tie two stored tensors that differ); the builder uses the table."""
    import torch
    from safetensors.torch import load_file, save_file

    model = model_copy(tiny_model, tmp_path / "m", tie_word_embeddings=True)
    assert checkpoints.tied_flag_contradicts_head(model) == "lm_head.weight"
    out = tmp_path / "out"
    started = time.monotonic()
    refused(["convert", str(model), "--precision", "fp32", "--out", str(out)], "tie_word_embeddings true",
            "lm_head.weight", "tie_word_embeddings to false", "--method olive")
    assert time.monotonic() - started < 30 and not out.exists()
    assert validate(ConvertSpec(model, out, "fp32", "olive")).path == model.resolve()  # the route that builds it right
    # A head stored equal to the table (a trainer that saved both) is what the flag says: accepted.
    weights = load_file(model / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert checkpoints.tied_flag_contradicts_head(model) == ""
    assert torch.equal(load_file(model / "model.safetensors")["lm_head.weight"], weights["model.embed_tokens.weight"])


# --- 7. an adapter whose target_modules do not match its weights or the base ----------------------------------------


@pytest.fixture(scope="module")
def lora(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "lora")


@pytest.mark.parametrize(("change", "words"), [
    ({"target_modules": ["nonexistent_proj"]}, "match no module of the base"),
    ({"target_modules": r".*\.nonexistent_proj"}, "match no module of the base"),
    ({"layers_to_transform": [5]}, "with layers_to_transform [5] match no module"),
    ({"target_modules": ["q_proj"]}, "which adapter_config.json's target_modules ['q_proj'] do not match"),
    ({"target_modules": ["q_proj", "v_proj", "input_layernorm"]}, "not a linear or embedding layer"),
])
def test_an_adapter_whose_targets_peft_would_not_load_is_refused_before_the_merge(
        lora: Path, tiny_model: Path, tmp_path: Path, change: dict, words: str) -> None:
    """Was: accepted, then the merge failed (NoMatchingPeftModuleError, exit 1) or, with targets that miss some of
    the weights, merged without them."""
    adapter = tmp_path / "adapter"
    shutil.copytree(lora, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **change,
                                                             "base_model_name_or_path": str(tiny_model)}))
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        inspect_adapter(adapter)
    out = tmp_path / "out"
    refused(["convert", str(adapter), "--out", str(out)], "set target_modules in adapter_config.json")
    assert not out.exists()


def test_an_rslora_adapters_rank_and_alpha_patterns_are_recorded(tiny_model: Path, tmp_path: Path) -> None:
    """Was: the manifest recorded the default rank and alpha only."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(
        r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 8},
        alpha_pattern={"v_proj": 32}))
    peft_model.save_pretrained(tmp_path / "rslora")
    described = inspect_adapter(tmp_path / "rslora").describe()
    assert (described.rank, described.alpha, described.use_rslora) == (4, 8.0, True)
    assert described.rank_pattern == {"v_proj": 8} and described.alpha_pattern == {"v_proj": 32.0}


# --- also seen: auto on a Phi-4-mini template -------------------------------------------------------------------------

#: Phi-4-mini-instruct's chat template (its tokenizer_config.json): without a generation prompt it ends with the EOS.
PHI4_MINI = ("{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
             "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + "
             "message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
             "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
             "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}")


def test_auto_derives_phi4_minis_template_whose_closed_conversation_ends_with_the_eos() -> None:
    """Was: refused as "folds the system text into the first user turn", which it does not."""
    derived = template_resolve.derive(PHI4_MINI, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert derived == templates.PromptTemplate("<|system|>{Content}<|end|>", "<|user|>{Content}<|end|>",
                                       "<|assistant|>{Content}<|end|>", "<|user|>{Content}<|end|><|assistant|>")
    assert templates.render(derived, template_resolve.PROBE) == jinja_render.render_jinja(PHI4_MINI, template_resolve.PROBE, eos_token="<|endoftext|>")
    assert template_resolve.rendered_turn_end(PHI4_MINI, eos_token="<|endoftext|>") == "<|end|>"


# --- found by the property test (tests/test_fuzz.py): fields of the wrong type -------------------------------------


@pytest.mark.parametrize(("field", "value"), [("architectures", 5), ("architectures", {"a": 1}),
                                              ("hidden_size", "x"), ("max_position_embeddings", [1]),
                                              ("num_hidden_layers", 0), ("tie_word_embeddings", "yes")])
def test_config_fields_of_the_wrong_type_are_refused_naming_the_field(tiny_model: Path, tmp_path: Path,
                                                                      field: str, value: object) -> None:
    """Was: ``unexpected error: TypeError: 'int' object is not subscriptable`` (or ValueError from int())."""
    model = model_copy(tiny_model, tmp_path / "m", **{field: value})
    with pytest.raises(InconsistentCheckpointError, match=f"config.json's {field} is"):
        checkpoints.inspect_source(model)
    refused(["convert", str(model), "--out", str(tmp_path / "out")], f"config.json's {field} is")


@pytest.mark.parametrize(("path", "value", "words"), [
    (("model",), "x", "model is not an object"), (("model", "decoder"), None, "no model.decoder section"),
    (("model", "decoder", "filename"), 3, "model.decoder.filename is 3"),
    (("model", "decoder", "filename"), "../model.onnx", "not a file name in the model's folder"),
    (("model", "eos_token_id"), 1.5, "eos_token_id is 1.5"), (("search",), [1], "search is not an object"),
])
def test_genai_config_fields_of_the_wrong_type_are_named_by_register_and_doctor(
        onnx_folder: Path, path: tuple[str, ...], value: object, words: str) -> None:
    """Was: ``unexpected error: AttributeError: 'str' object has no attribute 'get'`` (or TypeError) from doctor."""
    config = json.loads((onnx_folder / "genai_config.json").read_text())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (onnx_folder / "genai_config.json").write_text(json.dumps(config))
    refused(["register", str(onnx_folder), "--name", "wrong-type"], words)
    code, out, err = run(["doctor", str(onnx_folder), "--no-load"])
    assert code == 1 and words in out and "unexpected" not in out + err
