"""Tool calling through the real Foundry Local runtime: registration, the Python API and ``slmops serve``
driven by the official ``openai`` client.

A tiny random model with ``<tool_call>`` tokens shows what needs no skill: the markers reach the
runtime, a model that cannot call is not marked as able to, and bad requests get OpenAI's 400s.
The demo's fine-tune (the bundled SmolLM2 with the Veloria adapter, FP32) makes real calls in
tests/integration/test_bundled_model.py, which builds the bundled model once for all its tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from slmops.toolkit.core.errors import FoundryRequestError
from slmops.toolkit.domain import tools
from slmops.toolkit.domain.results.registration import read_registration
from slmops.toolkit.endpoint.cli import Endpoint, background
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.runtimes.foundry_session import find_model
from slmops.toolkit.stages import register

pytestmark = pytest.mark.slow  # every test here converts and loads a model

TINY = "tiny-tools"
PICK = {"type": "function", "function": {
    "name": "pick_city", "description": "Pick a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Quennport", "Lunmere"]}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "Pick a city."}]


@pytest.fixture(scope="module")
def tiny_tools(tmp_path_factory: pytest.TempPathFactory) -> register.Registration:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec
    from tests.models import make_tiny_model

    # Foundry Local's tool protocol is about 1,000 of the tiny tokenizer's tokens: a longer context.
    source = make_tiny_model(tmp_path_factory.mktemp("tools") / "qwen2", tool_tokens=True, context=2048)
    out = convert(ConvertSpec(source, tmp_path_factory.mktemp("tools-int4") / "int4", Precision.INT4),
                  progress=False).output_dir
    return register.register(out, TINY)  # threads auto: the pinned onnxruntime-genai reads the folder too


@pytest.fixture(scope="module")
def tiny_endpoint(tiny_tools: register.Registration):
    with background([TINY]) as running:
        yield running


def test_registration_publishes_the_markers_and_does_not_claim_a_random_model_can_call(
        tiny_tools: register.Registration) -> None:
    config = json.loads((tiny_tools.path / "genai_config.json").read_text())["model"]
    markers = tools.find_markers(tiny_tools.path)
    assert (config["bot_token_id"], config["eot_token_id"]) == (markers.start_id, markers.end_id)
    assert tiny_tools.tool_calling.markers == ("<tool_call>", "</tool_call>")
    assert not tiny_tools.tool_calling.supports and tiny_tools.tool_calling.detail.startswith("no ")
    assert not find_model(TINY).supports_tool_calling
    assert read_registration(tiny_tools.path).tool_calling.supports_tool_calling is False
    with foundry.LoadedModel(TINY) as model:
        assert model.markers == markers
        # The runtime renders the prompt as we do: our count is the runtime's own usage.
        answer = model.generate(ASK, max_tokens=2, tool_defs=[PICK], tool_choice="none")
        assert answer.prompt_tokens == len(model.prompt_ids(ASK, [PICK], "none"))


def test_a_model_registered_without_markers_refuses_tools(tiny_int4: Path) -> None:
    register.register(tiny_int4, "tiny-no-tools")
    with foundry.LoadedModel("tiny-no-tools") as model:
        assert model.markers is None
        with pytest.raises(tools.ToolDefinitionError, match="--tool-markers"):
            model.generate(ASK, max_tokens=4, tool_defs=[PICK])
        assert model.generate(ASK, max_tokens=4).text  # without tools it answers as before


@pytest.mark.parametrize(("options", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
    ({"tools": [PICK, PICK]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                            "properties": {"a": {"type": 3}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [PICK], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [PICK], "tool_choice": "always"}, "tool_choice"),
])
def test_bad_tool_definitions_get_openai_400s(tiny_endpoint: Endpoint, options: dict, param: str) -> None:
    client = tiny_endpoint.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=TINY, messages=ASK, max_tokens=4, **options)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param
    after = client.chat.completions.create(model=TINY, messages=ASK, max_tokens=2)  # the server keeps serving
    assert after.usage.completion_tokens >= 1 and after.choices[0].finish_reason in ("stop", "length")


def test_a_history_with_calls_and_results_is_accepted(tiny_endpoint: Endpoint) -> None:
    client = tiny_endpoint.client()
    call = {"id": "call_1", "type": "function", "function": {"name": "pick_city", "arguments": '{"city": "Lunmere"}'}}
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Lunmere it is."}]
    answer = client.chat.completions.create(model=TINY, messages=history, tools=[PICK], tool_choice="none",
                                            max_tokens=4, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        client.chat.completions.create(model=TINY, messages=[*history[:2], {"role": "tool", "content": "x"}],
                                       max_tokens=4)


def test_a_plain_answer_equals_the_runtimes_own_non_streamed_answer(tiny_endpoint: Endpoint) -> None:
    """The endpoint builds a plain answer from the runtime's stream (so a client that leaves can stop it): it must
    be the answer the runtime's own non-streamed layer gives, and a failure its failure.

    (Real tool calls through the endpoint are the fine-tune's tests below: a random model's forced call is refused
    by the runtime itself, streamed or not.)
    """
    asks = [{"messages": ASK, "max_tokens": 12},
            {"messages": ASK, "tools": [PICK], "tool_choice": "none", "max_tokens": 12}]
    client = tiny_endpoint.client(max_retries=0)
    served = [client.chat.completions.create(model=TINY, temperature=0, seed=7, **ask).model_dump() for ask in asks]
    forced = {"messages": ASK, "tools": [PICK], "tool_choice": "required", "max_tokens": 400}
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model=TINY, temperature=0, seed=7, **forced)
    with foundry.LoadedModel(TINY) as model:
        def native(ask: dict) -> dict:
            return model.native_complete(model.body(ask["messages"], max_tokens=ask["max_tokens"], temperature=0,
                                                    seed=7, stream=False, tool_defs=ask.get("tools"),
                                                    tool_choice=ask.get("tool_choice")))

        answers = [native(ask) for ask in asks]
        with pytest.raises(FoundryRequestError) as failed:
            native(forced)
    assert refused.value.body["message"] == str(failed.value) and refused.value.body["type"] == "server_error"
    for mine, theirs in zip(served, answers, strict=True):
        assert mine["choices"][0]["finish_reason"] == theirs["choices"][0]["finish_reason"]
        assert mine["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
        assert not mine["choices"][0]["message"]["tool_calls"] and not theirs["choices"][0]["message"].get("tool_calls")
        assert {k: mine["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")} == \
            {k: theirs["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
