"""Tool (function) calling: OpenAI tool definitions, the runtime's tool protocol, and calls checked against schemas.

Foundry Local (foundry-local-sdk 2.2.1) calls tools itself when the model publishes two
boundary tokens (``tool_call_start``/``tool_call_end`` in the catalog entry, the same tokens'
ids as ``bot_token_id``/``eot_token_id`` in ``genai_config.json``): it adds its own tool
protocol to the system message, constrains decoding with a grammar built from the tools' JSON
Schemas and parses ``<start>[{"name": ..., "parameters": {...}}]<end>`` into OpenAI
``tool_calls``. This module reproduces that rendering (so a fine-tune learns the exact prompt
the runtime sends, see :func:`runtime_messages`), checks tool definitions the way OpenAI's
API does, and scores a call against its tool's schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import InputError, InvalidOptionError

#: Tool-call boundary pairs models publish, first found wins: Qwen2.5/Qwen3/SmolLM3/Hermes,
#: Phi-4-mini, then SmolLM2's notebook tokens (SmolLM2 has no tool tokens; these two are never
#: used in chat, so a fine-tune can give them this meaning).
KNOWN_MARKERS: tuple[tuple[str, str], ...] = (
    ("<tool_call>", "</tool_call>"),
    ("<|tool_call|>", "<|/tool_call|>"),
    ("<jupyter_code>", "<jupyter_output>"),
)

#: The line the runtime asks a text answer to start with when a tool call is optional
#: (``tool_choice: auto``); it strips it from the answer.
MESSAGE_FRAME = "MESSAGE\n"

_PROTOCOL_HEAD = "Tool calling protocol for this conversation:\nAvailable tools:\n"
_PROTOCOL_RULES = (
    '. "name" must be a declared tool name and "parameters" must be its argument object. Use the dedicated '
    "tool boundary tokens, not a textual description or substitute characters. Emit the call block itself, "
    "without quoting it or using Markdown. Put all calls for this turn in one array inside one pair of tool "
    "boundaries. After the closing boundary, stop and wait for the external tool results. Use {} for "
    "parameterless tools. Do not use XML function or parameter tags. Each argument object must satisfy its "
    "tool's complete JSON Schema. Properties may appear in any order; omit unused optional properties. "
    "Preserve argument values exactly. JSON escaping, including Unicode escapes for literal angle brackets in "
    "strings, preserves the decoded value and is not substitution. If no tool is needed, answer normally."
)
_PROTOCOL_AUTO = (
    "\nFor ordinary assistant text, including a brief preamble, first emit MESSAGE followed by a newline. This "
    "framing line is not message content. For a direct tool call, start with its tool boundary instead. Never "
    "return an unframed description, JSON array, or textual imitation of a tool call."
)


@dataclass(frozen=True)
class Markers:
    """A model's tool-call boundaries: the tokens' text and ids.

    Attributes:
        start: The opening marker's text (``<tool_call>``).
        end: The closing marker's text.
        start_id: The opening marker's token id.
        end_id: The closing marker's token id.
    """

    start: str
    end: str
    start_id: int
    end_id: int


def _vocabulary(folder: Path) -> dict[str, int]:
    """Token text to id: the tokenizer's added tokens (where markers live) over its model vocabulary."""
    data = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    model = data.get("model") or {}
    vocab = dict(model["vocab"]) if isinstance(model.get("vocab"), dict) else {}
    vocab.update({t["content"]: int(t["id"]) for t in data.get("added_tokens", [])})
    return vocab


def find_markers(folder: str | Path, start: str | None = None, end: str | None = None) -> Markers | None:
    """The tool-call markers of the tokenizer in ``folder``: ``start``/``end`` when given, else the first known pair.

    Each marker must be one token of the vocabulary (the runtime matches them by id).

    Returns:
        The markers, or None when the tokenizer has no known pair (and none was given).

    Raises:
        InvalidOptionError: a given marker is not a single token of this tokenizer.
    """
    vocab = _vocabulary(Path(folder))
    if start or end:
        for label, text in (("tool call start marker", start), ("tool call end marker", end)):
            if not text or text not in vocab:
                raise InvalidOptionError(label, text, "a token of the model's tokenizer (e.g. <tool_call>); "
                                         "pass both markers, each one token")
        if start == end:
            raise InvalidOptionError("tool call markers", (start, end), "two different tokens")
        return Markers(start, end, vocab[start], vocab[end])
    for pair in KNOWN_MARKERS:
        if pair[0] in vocab and pair[1] in vocab:
            return Markers(pair[0], pair[1], vocab[pair[0]], vocab[pair[1]])
    return None


class ToolDefinitionError(InputError):
    """A ``tools`` or ``tool_choice`` value OpenAI's API would refuse; ``param`` (also ``name``) names the field."""

    def __init__(self, param: str, message: str) -> None:
        self.param = self.name = param
        super().__init__(message)


def check_tools(tools: object) -> list[dict]:
    """Check OpenAI ``tools`` (``[{"type": "function", "function": {"name", "description", "parameters"}}]``).

    Returns:
        The tools, each with ``parameters`` defaulted to an empty object schema.

    Raises:
        ToolDefinitionError: not a list, a non-function type, a missing or malformed name (OpenAI's
            ``^[a-zA-Z0-9_-]{1,64}$``), a name used twice, or parameters that are not a valid JSON Schema
            of an object.
    """
    import re

    import jsonschema

    if not isinstance(tools, list) or not tools:
        raise ToolDefinitionError("tools", "Invalid 'tools': expected a non-empty array of tool objects.")
    seen: set[str] = set()
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ToolDefinitionError(f"{where}.type", f"Invalid '{where}.type': expected 'function'.")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolDefinitionError(f"{where}.function", f"Missing required parameter: '{where}.function'.")
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", name):
            raise ToolDefinitionError(f"{where}.function.name", f"Invalid '{where}.function.name': {name!r} does "
                                      "not match '^[a-zA-Z0-9_-]{1,64}$'.")
        if name in seen:
            raise ToolDefinitionError(f"{where}.function.name", f"Invalid '{where}.function.name': the tool name "
                                      f"{name!r} is declared twice; tool names must be unique.")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise ToolDefinitionError(f"{where}.function.description",
                                      f"Invalid '{where}.function.description': expected a string.")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise ToolDefinitionError(f"{where}.function.parameters", f"Invalid '{where}.function.parameters': "
                                      "expected a JSON Schema object with \"type\": \"object\".")
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise ToolDefinitionError(f"{where}.function.parameters", f"Invalid schema for function {name!r}: "
                                      f"{exc.message}.") from exc
        out.append({"type": "function", "function": {**function, "parameters": parameters}})
    return out


def check_tool_choice(choice: object, tools: list[dict] | None) -> str | dict | None:
    """Check OpenAI ``tool_choice`` against ``tools``: ``none``, ``auto``, ``required`` or a named function.

    Raises:
        ToolDefinitionError: an unknown value, a named function that is not among ``tools``, or a
            choice other than ``none`` without tools.
    """
    if choice is None:
        return None
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise ToolDefinitionError("tool_choice", f"Invalid value for 'tool_choice': {choice!r} is only allowed "
                                      "when 'tools' are specified.")
        return choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        and isinstance(choice.get("function"), dict) else None
    if not isinstance(name, str):
        raise ToolDefinitionError("tool_choice", "Invalid value for 'tool_choice': expected 'none', 'auto', "
                                  "'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.")
    if name not in tool_names(tools or []):
        raise ToolDefinitionError("tool_choice", f"Invalid value for 'tool_choice': function {name!r} is not "
                                  f"among the declared tools ({', '.join(tool_names(tools or [])) or 'none'}).")
    return {"type": "function", "function": {"name": name}}


def tool_names(tools: list[dict]) -> list[str]:
    """The declared functions' names, in order."""
    return [t["function"]["name"] for t in tools]


def call_text(calls: list[dict], markers: Markers) -> str:
    """Assistant tool calls (OpenAI ``tool_calls``) as the runtime renders them in a prompt: ``<start>[...]<end>``."""
    batch = []
    for call in calls:
        arguments = call["function"].get("arguments") or "{}"
        batch.append({"name": call["function"]["name"],
                      "parameters": json.loads(arguments) if isinstance(arguments, str) else arguments})
    return markers.start + json.dumps(batch, separators=(",", ":"), ensure_ascii=False) + markers.end


def protocol(tools: list[dict], markers: Markers, *, auto: bool) -> str:
    """The tool protocol the runtime adds to the system message (its own wording, foundry-local-sdk 2.2.1)."""
    listed = json.dumps(tools, separators=(",", ":"), ensure_ascii=False)
    text = (f"{_PROTOCOL_HEAD}{listed}\nTo call tools, emit {markers.start} followed by a JSON array of objects with "
            f"exactly the keys \"name\" and \"parameters\", then {markers.end}{_PROTOCOL_RULES}")
    return text + (_PROTOCOL_AUTO if auto else "")


def runtime_messages(messages: list[dict], tools: list[dict] | None, markers: Markers | None,
                     tool_choice: object = "auto") -> list[dict]:
    """``messages`` as Foundry Local hands them to the chat template: plain ``{"role", "content"}`` turns.

    With tools offered (and ``tool_choice`` not ``none``) the protocol joins the system message
    (after a blank line) or becomes it; assistant tool calls become their ``<start>[...]<end>``
    text, tool results ``tool`` turns. A named function lists that tool alone. With ``none`` the
    runtime drops the tools and the calls (an assistant turn that only called a tool renders empty).
    """
    offered = bool(tools) and markers is not None and tool_choice != "none"
    out = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if message.get("role") == "assistant" and message.get("tool_calls") and offered:
            content = content + call_text(message["tool_calls"], markers)
        out.append({"role": message["role"], "content": content})
    if offered:
        if isinstance(tool_choice, dict):
            tools = [t for t in tools if t["function"]["name"] == tool_choice["function"]["name"]]
        text = protocol(tools, markers, auto=tool_choice in (None, "auto"))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def call_problems(call: dict, tools: list[dict]) -> list[str]:
    """What is wrong with one OpenAI tool call against the tools offered (empty: an offered tool, arguments valid)."""
    import jsonschema

    function = call.get("function") or {}
    name = function.get("name")
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    if name not in schemas:
        return [f"called {name!r}, which was not offered"]
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        return [f"{name}: arguments are not JSON ({function.get('arguments')!r})"]
    errors = sorted(jsonschema.Draft202012Validator(schemas[name]).iter_errors(arguments), key=str)
    return [f"{name}: arguments invalid against its schema ({errors[0].message})"] if errors else []


@dataclass(frozen=True)
class CallCheck:
    """One tool call scored against what was expected.

    Attributes:
        passed: Every check held.
        problems: What failed, in words (empty when passed).
    """

    passed: bool
    problems: tuple[str, ...]


def check_call(calls: list[dict], tools: list[dict], expected: dict | None) -> CallCheck:
    """Score the OpenAI ``tool_calls`` of one answer.

    Args:
        calls: The answer's ``tool_calls`` (empty when it answered in text).
        tools: The tools offered.
        expected: ``{"name": ..., "arguments": {...}}`` (argument values that must be present,
            compared exactly; strings case-insensitively), or None when no call is expected.

    Every call must name an offered tool and carry arguments that parse as JSON and validate
    against that tool's schema (a call to a tool nobody offered fails); the expected function
    must be called with the expected values; with ``expected`` None there must be no call.
    """
    problems = []
    parsed = []
    for call in calls:
        own = call_problems(call, tools)
        problems.extend(own)
        if not own:
            parsed.append((call["function"]["name"], json.loads(call["function"].get("arguments") or "{}")))
    if expected is None:
        if calls:
            problems.append(f"called {', '.join(str((c.get('function') or {}).get('name')) for c in calls)} "
                            "where no call was expected")
    elif not calls:
        problems.append(f"no tool call (expected {expected['name']})")
    else:
        match = [args for name, args in parsed if name == expected["name"]]
        if not match:
            problems.append(f"called {', '.join(n for n, _ in parsed) or 'nothing valid'}, expected "
                            f"{expected['name']}")
        else:
            for key, want in (expected.get("arguments") or {}).items():
                got = match[0].get(key) if isinstance(match[0], dict) else None
                same = (got.strip().casefold() == want.strip().casefold()) if isinstance(got, str) and \
                    isinstance(want, str) else got == want
                if not same:
                    problems.append(f"{expected['name']}: {key}={got!r}, expected {want!r}")
    return CallCheck(not problems, tuple(problems))


def registered_markers(folder: str | Path) -> Markers | None:
    """The markers a registered model folder publishes (``genai_config.json``'s ``bot_token_id``/``eot_token_id``).

    Returns:
        The markers, or None when the folder publishes none (the model was registered without them).
    """
    folder = Path(folder)
    try:
        model = json.loads((folder / "genai_config.json").read_text(encoding="utf-8")).get("model", {})
        start_id, end_id = model.get("bot_token_id"), model.get("eot_token_id")
        if not isinstance(start_id, int) or not isinstance(end_id, int) or start_id < 0 or end_id < 0:
            return None
        by_id = {i: text for text, i in _vocabulary(folder).items()}
    except (OSError, ValueError):
        return None
    if start_id not in by_id or end_id not in by_id:
        return None
    return Markers(by_id[start_id], by_id[end_id], start_id, end_id)
