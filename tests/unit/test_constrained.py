"""The batch engine's grammars (:mod:`slmops.toolkit.runtimes.constrained`) over the tiny tokenizer: random logits,
masked each step, make JSON of the schema or a well-formed tool call."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from slmops.toolkit.domain.tools import Markers
from slmops.toolkit.runtimes.constrained import Grammars, tool_calls
from tests.models import _tiny_tokenizer

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}, "days": {"type": "integer"}},
          "required": ["city", "days"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]


@pytest.fixture(scope="module")
def grammars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Grammars, Markers]:
    folder = tmp_path_factory.mktemp("constrained")
    tokenizer, _ = _tiny_tokenizer(tool_tokens=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    vocab = tokenizer.backend_tokenizer.get_vocab()
    return Grammars(folder, 448, (vocab["<|im_end|>"],)), Markers("<tool_call>", "</tool_call>", vocab["<tool_call>"],
                                                                  vocab["</tool_call>"])


def _decode(grammars: Grammars, markers: Markers, body: dict, seed: int) -> list[int]:
    constraint, rng, tokens = grammars.constraint(body, markers), np.random.default_rng(seed), []
    while not constraint.done and len(tokens) < 400:
        logits = rng.normal(size=448).astype(np.float32)
        constraint.mask(logits)
        tokens.append(int(np.argmax(logits)))
        constraint.advance(tokens[-1])
    assert constraint.done
    return tokens


def _text(grammars: Grammars, tokens: list[int]) -> str:
    return bytes(grammars.tokenizer.decode_bytes(tokens)).decode("utf-8", errors="replace")


def test_a_json_schema_answer_is_json_of_the_schema(grammars) -> None:
    body = {"response_format": {"type": "json_schema", "json_schema": SCHEMA}}
    for seed in range(3):
        jsonschema.validate(json.loads(_text(grammars[0], _decode(*grammars, body, seed))), SCHEMA)


def test_a_required_tool_call_is_the_markers_around_calls_of_declared_tools(grammars) -> None:
    tokens = _decode(*grammars, {"tools": TOOLS, "tool_choice": "required"}, 1)
    markers = grammars[1]
    assert tokens[0] == markers.start_id and tokens[-1] == markers.end_id
    calls = tool_calls(_text(grammars[0], tokens[1:-1]))
    assert calls and all(c["function"]["name"] == "get_weather" for c in calls)
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMA)


def test_no_constraint_without_response_format_or_tools(grammars) -> None:
    assert grammars[0].constraint({"response_format": {"type": "text"}}, grammars[1]) is None
    assert grammars[0].constraint({"tools": TOOLS, "tool_choice": "none"}, grammars[1]) is None
