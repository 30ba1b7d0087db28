"""Constrained decoding on the batch engine: ``response_format`` and tool calls as llguidance grammars.

Foundry Local constrains decoding with llguidance (the library ONNX Runtime GenAI builds in) for
``response_format`` and ``tools``; a request the batch engine answers itself (an adapter's, see
:mod:`slmops.toolkit.endpoint.adapters`) gets the same constraints here. Each constrained sequence holds a
:class:`Constraint`, an llguidance matcher over the model's own tokenizer (``tokenizer.json`` of the model
folder, nothing downloaded): before each pick its mask sets every token the grammar does not allow to
``-inf``, and the picked token advances it. A sequence without one is decoded as before.

The grammars follow Foundry Local's (foundry-local-sdk 2.2.1): ``json_object`` any JSON object,
``json_schema`` its schema; with tools, ``<start>[{"name": ..., "parameters": {...}}]<end>`` (the model's
registered markers, :mod:`slmops.toolkit.domain.tools`), each call's ``parameters`` its tool's JSON Schema;
``tool_choice`` ``required`` or a named function must call (the named one alone), ``auto`` may answer text
framed by :data:`~slmops.toolkit.domain.tools.MESSAGE_FRAME` instead. JSON is written compactly (no
whitespace between tokens), so a model cannot spend its tokens on blank space.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np

from slmops.toolkit.domain.tools import MESSAGE_FRAME, Markers

_COMPACT = {"whitespace_flexible": False}


class Constraint:
    """One sequence's grammar matcher: masks its logits and follows its tokens.

    Args:
        matcher: An ``llguidance.LLMatcher`` of the grammar.
        vocab: Logits per row (the model's vocabulary, which may be longer than the tokenizer's).
    """

    def __init__(self, matcher, vocab: int) -> None:
        self.matcher, self.vocab = matcher, vocab

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of every token the grammar does not allow next to ``-inf`` (in place)."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), np.uint8), bitorder="little")
        allowed = np.zeros(self.vocab, bool)
        allowed[:min(self.vocab, bits.size)] = bits[:self.vocab].astype(bool)
        logits[~allowed] = -np.inf

    def advance(self, token: int) -> None:
        """Follow the picked ``token``.

        Raises:
            RuntimeError: the grammar refused it (or failed).
        """
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Whether the grammar allows nothing more (the answer is complete)."""
        return self.matcher.is_stopped()


class Grammars:
    """The grammars of one model's requests, over its tokenizer (``tokenizer.json`` of ``folder``).

    Args:
        folder: The model folder.
        vocab: Logits per row of the model's graph.
        eos_ids: The model's end-of-sequence ids (allowed once the grammar is complete).
    """

    def __init__(self, folder: str | Path, vocab: int, eos_ids: tuple[int, ...]) -> None:
        import llguidance

        self.llguidance, self.vocab = llguidance, vocab
        text = (Path(folder) / "tokenizer.json").read_text(encoding="utf-8")
        self.tokenizer = llguidance.LLTokenizer(text, n_vocab=vocab, eos_token=list(eos_ids))

    def constraint(self, body: dict, markers: Markers | None) -> Constraint | None:
        """The constraint of a checked runtime request ``body`` (None: nothing to constrain)."""
        grammar = request_grammar(body, markers, self.llguidance.LLMatcher)
        if grammar is None:
            return None
        matcher = self.llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the request's grammar is not usable: {matcher.get_error()}")
        return Constraint(matcher, self.vocab)


def calling(body: dict, markers: Markers | None) -> bool:
    """Whether ``body`` offers tools the model may call (tools, markers, ``tool_choice`` not ``none``)."""
    return bool(body.get("tools")) and markers is not None and body.get("tool_choice") != "none"


def request_grammar(body: dict, markers: Markers | None, matcher) -> str | None:
    """The llguidance grammar of ``body`` (``matcher``: ``llguidance.LLMatcher``, whose compilers it uses).

    Tools come first (as Foundry Local, which ignores ``response_format`` in a tool request).
    """
    if calling(body, markers):
        choice, tools = body.get("tool_choice") or "auto", body["tools"]
        if isinstance(choice, dict):
            tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
        calls = {"type": "array", "minItems": 1, "x-guidance": _COMPACT,
                 "items": {"anyOf": [_call_schema(t["function"]) for t in tools]}}
        if body.get("parallel_tool_calls") is False:
            calls["maxItems"] = 1
        call = f"<[{markers.start_id}]> %json {json.dumps(calls)} <[{markers.end_id}]>"
        lark = f"start: {call}\n" if choice != "auto" else (
            f"start: call | text\ncall: {call}\ntext: {json.dumps(MESSAGE_FRAME)} /(?s:.*)/\n")
        return matcher.grammar_from_lark(lark)
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_object":
        return matcher.grammar_from_json_schema({"type": "object"}, defaults=_COMPACT)
    if response_format.get("type") == "json_schema":
        return matcher.grammar_from_json_schema(response_format["json_schema"], defaults=_COMPACT)
    return None


def _call_schema(function: dict) -> dict:
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": function["name"]}, "parameters": parameters},
            "required": ["name", "parameters"], "additionalProperties": False}


def tool_calls(text: str) -> list[dict]:
    """The JSON array between the markers (``[{"name", "parameters"}, ...]``) as OpenAI ``tool_calls`` deltas."""
    return [{"index": i, "id": f"call_{secrets.token_hex(12)}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call.get("parameters") or {})}}
            for i, call in enumerate(json.loads(text))]
