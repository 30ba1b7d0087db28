"""The bundled SmolLM2 model end to end: convert, register, answer, and INT4 decodes faster than FP32; its demo
fine-tune calls tools through the OpenAI client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jsonschema
import pytest

from slmops.toolkit.domain import datasets
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.endpoint.cli import background
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_session import find_model
from slmops.toolkit.stages import bench, convert, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_catalog import list_models, unregister
from slmops.toolkit.weights.checkpoints import inspect_source

#: The bundled model and its fine-tune take minutes to build: ``make test`` starts this file first, on a worker
#: of its own (tests/conftest.py).
pytestmark = pytest.mark.early


class Builds(NamedTuple):
    folder: Path  # fp32/, int4/ and convert.json
    manifests: list


@pytest.fixture(scope="module")
def fp32_int4(bundled: Path, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    """The bundled model converted at FP32 and INT4 once for this module (each build passed its parity gate)."""
    models = tmp_path_factory.mktemp("bundled") / "models"
    return Builds(models, convert.convert_all(bundled, ["fp32", "int4"], models, progress=False))


@pytest.fixture(scope="module")
def smol(fp32_int4: Builds) -> list:
    """Both builds registered once for this module (``smol-fp32``, ``smol-int4``): ``register_all``'s rows."""
    return register.register_all(fp32_int4.folder / "convert.json", "smol")


@pytest.mark.slow
def test_bundled_model_is_a_real_hf_folder(bundled: Path) -> None:
    source = inspect_source(bundled)
    assert source.architecture == "LlamaForCausalLM" and source.context_length == 8192


@pytest.mark.slow
def test_bundled_fp32_and_int4_through_foundry(fp32_int4: Builds, smol: list) -> None:
    manifests = fp32_int4.manifests
    ratio = manifests[1].size_mb / manifests[0].size_mb
    assert 0.2 < ratio < 0.5  # INT4 with the FP32 embedding table kept (SPEC: 0.37x)
    assert [r.name for r in smol] == ["smol-fp32", "smol-int4"]
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

    int8 = convert.convert(ConvertSpec(bundled, tmp_path / "int8" / "int8", Precision.INT8,
                                               quantize_from=fp32_int4.folder / "fp32"), progress=False)
    assert int8.manifest.weights.parameters.keys() == {"int8"} and int8.manifest.quantized_from is not None
    assert int8.manifest.size_ratio_vs_fp32 < 0.3  # estimated FP32: 134.5M parameters x 4 bytes
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
        unregister(name)
        assert name not in {row.name for row in list_models()}


def reg_strings(folder: Path):
    from slmops.toolkit.domain.templates import PromptTemplate

    return PromptTemplate(**json.loads((folder / "inference_model.json").read_text())["PromptTemplate"])


@pytest.mark.slow
def test_checklist_passes_the_bundled_int4_and_fails_a_scrambled_copy(fp32_int4: Builds, smol: list,
                                                                      tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from slmops.toolkit.stages import checklist

    scrambled = tmp_path / "scrambled"
    shutil.copytree(fp32_int4.folder / "int4", scrambled)
    data = np.fromfile(scrambled / "model.onnx.data", dtype=np.uint8)
    np.random.default_rng(0).shuffle(data)  # same bytes, wrong places: weights and scales garbage
    data.tofile(scrambled / "model.onnx.data")
    register.register(scrambled, "smol-scrambled")
    # Both in one checklist, as a run checks its builds: the FP32 reference's logits are read once for the two.
    results = checklist.run_checklists(["smol-int4", "smol-scrambled"], requests=0, lengths=[], reference="smol-fp32",
                                       progress=False)
    verdicts = {}
    for result in results:
        verdicts[result.model] = {(c.check, c.case): c.passed for c in result.checks}
        assert all(passed for (check, _), passed in verdicts[result.model].items() if check == "edge")  # alive, clear
    good, bad = verdicts["smol-int4"], verdicts["smol-scrambled"]
    assert good["domain", "domain-overall"] and good["quality", "top1-agreement"] and good["quality", "kl-divergence"]
    assert not bad["domain", "domain-overall"]
    # Constrained decoding cannot steer garbage weights either: the runtime gives up, and the case fails.
    assert good["structured", "structured-overall"] and not bad["structured", "structured-overall"]
    assert not bad["quality", "top1-agreement"] and not bad["quality", "kl-divergence"]


# --- The demo's fine-tune: real tool calls ----------------------------------------------------------------

TUNED = "veloria-tools-fp32"


@pytest.fixture(scope="module")
def tuned(bundled: Path, tmp_path_factory: pytest.TempPathFactory):
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec
    from slmops.toolkit.stages.finetune import bundled_adapter

    adapter = bundled_adapter(bundled, progress=False).adapter
    out = convert(ConvertSpec(adapter, tmp_path_factory.mktemp("tuned") / "fp32", Precision.FP32),
                  progress=False).output_dir
    examples = datasets.load_dataset()
    registration = register.register(out, TUNED, tool_probe=datasets.tool_probe(examples))
    with background([TUNED]) as running:
        yield registration, running, examples


def _valid(call, offered: list[dict]) -> dict:
    """The call's arguments, parsed and validated against its tool's schema."""
    schema = next(t["function"]["parameters"] for t in offered if t["function"]["name"] == call.function.name)
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, schema)
    return arguments


@pytest.mark.slow
def test_the_fine_tune_calls_through_the_openai_client(tuned) -> None:
    registration, endpoint, examples = tuned
    assert registration.tool_calling.supports and find_model(TUNED).supports_tool_calling
    case = datasets.tool_probe(examples)
    offered, want = case["tools"], case["expect"]["call"]
    client = endpoint.client()
    plain = client.chat.completions.create(model=TUNED, messages=case["messages"], tools=offered, temperature=0,
                                           max_tokens=64)
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.id and call.type == "function" and call.function.name == want["name"]
    assert _valid(call, offered) == want["arguments"]
    chunks = list(client.chat.completions.create(model=TUNED, messages=case["messages"], tools=offered,
                                                 temperature=0, max_tokens=64, stream=True))
    pieces = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert pieces and {p.index for p in pieces} == {0}
    assert "".join(p.function.arguments or "" for p in pieces) == call.function.arguments
    assert "".join(p.function.name or "" for p in pieces) == call.function.name
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # The result fed back: the model answers from it, in text.
    history = [*case["messages"], choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"city": "Quennport", "sky": "rain", '
                                                                     '"temperature_c": 11}'}]
    answer = client.chat.completions.create(model=TUNED, messages=history, tools=offered, temperature=0,
                                            max_tokens=48).choices[0]
    assert answer.finish_reason == "stop" and not answer.message.tool_calls and "rain" in answer.message.content


@pytest.mark.slow
def test_tool_choice_named_required_and_none_are_honoured(tuned) -> None:
    _, endpoint, examples = tuned
    case = datasets.tool_probe(examples)  # a weather question
    offered = case["tools"]
    client = endpoint.client()
    other = next(t["function"]["name"] for t in offered if t["function"]["name"] != case["expect"]["call"]["name"])
    named = client.chat.completions.create(model=TUNED, messages=case["messages"], tools=offered, temperature=0,
                                           max_tokens=64, tool_choice={"type": "function", "function": {"name": other}})
    assert [c.function.name for c in named.choices[0].message.tool_calls] == [other]
    _valid(named.choices[0].message.tool_calls[0], offered)
    plain_question = [{"role": "user", "content": "What is the capital of Veloria?"}]
    required = client.chat.completions.create(model=TUNED, messages=plain_question, tools=offered, temperature=0,
                                              max_tokens=64, tool_choice="required").choices[0]
    assert required.finish_reason == "tool_calls" and required.message.tool_calls
    _valid(required.message.tool_calls[0], offered)
    none = client.chat.completions.create(model=TUNED, messages=case["messages"], tools=offered, temperature=0,
                                          max_tokens=48, tool_choice="none").choices[0]
    assert not none.message.tool_calls and none.message.content and none.finish_reason == "stop"
    auto_text = client.chat.completions.create(model=TUNED, messages=plain_question, tools=offered, temperature=0,
                                               max_tokens=48).choices[0]
    assert not auto_text.message.tool_calls and "Quennport" in auto_text.message.content


@pytest.mark.slow
def test_the_python_api_keeps_a_call_in_the_conversation_and_answers_its_result(tuned) -> None:
    """LoadedModel.chat, read as slmops chat reads it: up to the Generation, then the tool's result."""
    from slmops.toolkit.runtimes.foundry_requests import Generation

    _, _, examples = tuned
    case = datasets.tool_probe(examples)
    with foundry.LoadedModel(TUNED) as model:
        turn = model.chat(case["messages"][0]["content"], tool_defs=case["tools"], temperature=0, max_tokens=64)
        first = next(piece for piece in turn if isinstance(piece, Generation))  # the caller stops reading here
        assert first.finish_reason == "tool_calls" and first.tool_calls[0]["function"]["name"] == "city_weather"
        reply = [piece for piece in model.chat('{"sky": "rain", "temperature_c": 11}', role="tool",
                                               tool_call_id=first.tool_calls[0]["id"], tool_defs=case["tools"],
                                               temperature=0, max_tokens=48)][-1]
        assert reply.finish_reason == "stop" and not reply.tool_calls and "rain" in reply.text
