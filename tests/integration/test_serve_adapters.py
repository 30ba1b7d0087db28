"""Per-request adapters in ``slmops serve``: ``--adapter NAME=FILE`` serves each fine-tune under its own model name
over one loaded base. Real peft adapters on the tiny random model, kept apart by the real builder
(``slmops convert ADAPTER --keep-adapter --also-adapter OTHER``), served through the endpoint and asked with the
official ``openai`` client; each adapter's greedy answer must be its merged build's (``slmops convert ADAPTER``,
served alone), streamed and not, switched from request to request and decoded together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openai
import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint.cli import background, run
from slmops.toolkit.stages import register
from slmops.toolkit.weights.lora_apart import write_onnx_adapter
from tests.models import make_tiny_model
from tests.unit.test_adapters import make_adapter

BASE, MERGED = "tiny-lora-base", {"support": "tiny-merged-support", "legal": "tiny-merged-legal"}
PROMPTS = ["Item 1: describe a cat.", "Where is the ship?", "Name three colours of the sky at dusk."]


@pytest.fixture(scope="module")
def builds(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fine-tunes trained differently (modules, rank, seed), kept apart over one FP32 base and merged each."""
    work = tmp_path_factory.mktemp("serve-adapters")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_HOME", str(work / "home"))  # the merges go there
        support = make_adapter(tiny_model, work / "support", target_modules=("q_proj", "v_proj", "down_proj"))
        legal = make_adapter(tiny_model, work / "legal", target_modules=("q_proj", "v_proj"), rank=8, seed=7)
        kept = work / "kept"
        assert cli.main(["convert", str(support), "--keep-adapter", "--also-adapter", str(legal), "--precision",
                         "fp32", "--out", str(kept)]) == 0
        register.register(kept, BASE)
        for name, adapter in (("support", support), ("legal", legal)):
            assert cli.main(["convert", str(adapter), "--precision", "fp32", "--out", str(work / f"merged-{name}")]) == 0
            register.register(work / f"merged-{name}", MERGED[name])
    return {"support": kept / "adapters" / "support.onnx_adapter", "legal": kept / "adapters" / "legal.onnx_adapter",
            "kept": kept}


def _ask(client: openai.OpenAI, model: str, prompt: str, stream: bool = False) -> str:
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        answer = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
        assert answer.model == model
        return answer.choices[0].message.content
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert {chunk.model for chunk in chunks} == {model}
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_each_adapter_answers_as_its_merged_build_switched_per_request_streamed_and_together(builds) -> None:
    adapters = [f"{name}={builds[name]}" for name in ("support", "legal")]
    with background([BASE], adapters=adapters, batch_size=4) as served, \
            background(list(MERGED.values()), batch_size=4) as merged:
        client, reference = served.client(), merged.client()
        listed = {model.id: model for model in client.models.list()}
        assert set(listed) == {BASE, "support", "legal"}
        assert listed["support"].model_extra["parent"] == BASE and listed["legal"].model_extra["parent"] == BASE
        expected = {name: [_ask(reference, MERGED[name], p) for p in PROMPTS] for name in MERGED}
        base = [_ask(client, BASE, p) for p in PROMPTS]
        # Trained differently, they answer differently (each other and the base), on at least one prompt each.
        assert expected["support"] != expected["legal"]
        assert expected["support"] != base and expected["legal"] != base
        # Switched on every request (support, legal, support, ...), plain and streamed.
        for i, prompt in enumerate(PROMPTS):
            for name in ("support", "legal"):
                assert _ask(client, name, prompt) == expected[name][i], (name, prompt)
                assert _ask(client, name, prompt, stream=True) == expected[name][i], (name, prompt, "streamed")
        assert [_ask(client, BASE, p) for p in PROMPTS] == base  # the base's answer is left alone

        async def together() -> list[str]:
            asynchronous = openai.AsyncOpenAI(base_url=served.url, api_key=served.api_key, max_retries=0)
            try:
                answers = await asyncio.gather(*(asynchronous.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": p}], max_tokens=10, temperature=0)
                    for p in PROMPTS for name in ("support", "legal", BASE)))
                return [answer.choices[0].message.content for answer in answers]
            finally:
                await asynchronous.close()

        mixed = asyncio.run(together())
        assert mixed == [answer for i in range(len(PROMPTS))
                         for answer in (expected["support"][i], expected["legal"][i], base[i])]


def test_adapters_that_cannot_be_served_are_refused_in_one_line_before_serving(
        builds, capsys: pytest.CaptureFixture[str]) -> None:
    file = builds["support"]
    # Another base's adapter: the same input names, another hidden size.
    other = builds["kept"].parent / "other-base.onnx_adapter"
    write_onnx_adapter(other, {name: np.zeros((value.shape()[0] + 8, *value.shape()[1:]), np.float32) for name, value
                               in ort.AdapterFormat.read_adapter(str(file)).get_parameters().items()})
    cases = [
        ([BASE], [f"x={other}"], "is not an adapter of"),
        ([BASE], [f"{BASE}={file}"], "served twice"),
        ([BASE], [f"a={file}", f"a={builds['legal']}"], "served twice"),
        ([BASE], ["support"], "is not NAME=FILE"),
        ([BASE], [f"x={builds['kept'] / 'genai_config.json'}"], "not an ONNX Runtime adapter file"),
        ([BASE], [f"x={builds['kept'] / 'missing.onnx_adapter'}"], "is not a file"),
        ([MERGED["support"]], [f"x={file}"], "without LoRA inputs"),
        ([BASE, MERGED["legal"]], [f"x={file}"], "over one base"),
    ]
    for names, adapters, words in cases:
        with pytest.raises(InputError, match=words):
            run(names, adapters=adapters)
    with pytest.raises(InputError, match="--batch-size"):
        run([BASE], adapters=[f"x={file}"], batch_size=0)
    capsys.readouterr()
    assert cli.main(["serve", BASE, "--adapter", f"support={builds['kept'] / 'model.onnx'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--keep-adapter" in error, error


def test_one_batch_holds_one_adapter_and_another_adapters_request_waits_its_turn_in_arrival_order(builds) -> None:
    """The engine's schedule: a request of another adapter waits for the running batch to drain, and one of the
    running adapter that came after it waits behind it; each answers as it does alone."""
    import threading
    import time

    from slmops.toolkit.runtimes.adapter_weights import load_adapter, lora_inputs
    from slmops.toolkit.runtimes.batching import BatchEngine

    engine = BatchEngine(builds["kept"], batch_size=4)
    inputs = lora_inputs(builds["kept"] / "model.onnx")
    for name in ("support", "legal"):
        engine.adapters[name] = load_adapter(builds[name], inputs, BASE).values
    prompt = [5 + i for i in range(12)]

    def run(order: list[str]) -> list[tuple[list[int], float]]:
        results: list = [None] * len(order)
        done = threading.Semaphore(0)
        for i, adapter in enumerate(order):
            tokens: list[int] = []

            def emit(token, reason, i=i, tokens=tokens):
                if token is not None:
                    tokens.append((token, time.perf_counter()))
                else:
                    results[i] = ([t for t, _ in tokens], tokens[0][1])
                    done.release()

            engine.submit(prompt, engine.settings.sampling(12, 0.0), emit, adapter=adapter)
        for _ in order:
            assert done.acquire(timeout=120)
        return results

    try:
        alone = {name: run([name])[0][0] for name in ("support", "legal", "")}
        assert len(set(map(tuple, alone.values()))) == 3  # the adapters change the answer
        mixed = run(["support", "support", "legal", "support", ""])
        assert [tokens for tokens, _ in mixed] == [alone[a] for a in ("support", "support", "legal", "support", "")]
        first = [start for _, start in mixed]
        assert first[1] < first[2] < first[3] < first[4]  # legal before the later support, the base last
    finally:
        engine.close()


SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "note": {"type": "string", "maxLength": 12}},
          "required": ["answer", "count", "note"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The forecast of a city.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                           "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def tool_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base with ``<tool_call>`` markers and room for Foundry Local's tool protocol, one adapter kept apart."""
    work = tmp_path_factory.mktemp("serve-adapters-tools")
    model = make_tiny_model(work / "qwen2-tools", tool_tokens=True, context=2048)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLMOPS_HOME", str(work / "home"))
        adapter = make_adapter(model, work / "support", target_modules=("q_proj", "v_proj", "down_proj"))
        assert cli.main(["convert", str(adapter), "--keep-adapter", "--precision", "fp32", "--out",
                         str(work / "kept")]) == 0
        register.register(work / "kept", "tiny-lora-tools")
    return work / "kept" / "adapters" / "support.onnx_adapter"


def _answer(client: openai.OpenAI, stream: bool, **options) -> tuple[str | None, list[dict], str]:
    """The answer's text, its tool calls (as dicts) and finish reason, streamed or not."""
    options = {"model": "support", "messages": [{"role": "user", "content": "Weather in Oslo for 3 days?"}],
               "max_tokens": 120, "temperature": 0, **options}
    if not stream:
        choice = client.chat.completions.create(**options).choices[0]
        return (choice.message.content, [c.model_dump() for c in choice.message.tool_calls or []],
                choice.finish_reason)
    text, calls, reason = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **options):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            call["id"] = piece.id or call["id"]
            call["function"]["name"] += piece.function.name or ""
            call["function"]["arguments"] += piece.function.arguments or ""
        reason = chunk.choices[0].finish_reason or reason
    return text, [calls[i] for i in sorted(calls)], reason


def test_an_adapter_answers_structured_output_and_tool_calls_constrained_in_the_batch_engine(tool_base) -> None:
    """``response_format`` and ``tools`` with an adapter (which Foundry Local cannot apply): a random model's answer,
    constrained by the engine's grammar, is JSON of the schema / a well-formed call of a declared tool."""
    import json

    import jsonschema

    with background(["tiny-lora-tools"], adapters=[f"support={tool_base}"], batch_size=4) as served:
        client = served.client()
        for stream in (False, True):
            text, calls, reason = _answer(client, stream, response_format={
                "type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}})
            jsonschema.validate(json.loads(text), SCHEMA)
            assert not calls and reason == "stop", (text, reason)
            text, _, _ = _answer(client, stream, response_format={"type": "json_object"})
            assert isinstance(json.loads(text), dict), text
            for choice, names in (("required", {"get_weather", "get_time"}),
                                  ({"type": "function", "function": {"name": "get_weather"}}, {"get_weather"})):
                text, calls, reason = _answer(client, stream, tools=TOOLS, tool_choice=choice)
                assert reason == "tool_calls" and calls and not text, (text, calls, reason)
                for call in calls:
                    assert call["id"] and call["type"] == "function" and call["function"]["name"] in names, call
                    schema = WEATHER if call["function"]["name"] == "get_weather" else TOOLS[1]["function"]["parameters"]
                    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
