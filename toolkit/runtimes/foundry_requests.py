"""What Foundry Local is asked and answers: chat messages and options checked before a request, and its results."""

from __future__ import annotations

from dataclasses import dataclass

from slmops.toolkit.core.errors import (
    InvalidOptionError,
)
from slmops.toolkit.domain.results.bench import decode_tps

_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Generation:
    """One answer and what it cost.

    Attributes:
        text: The generated text.
        prompt_tokens: Tokens in the prompt the runtime built (template applied).
        completion_tokens: Tokens generated.
        ttft_s: Seconds to the first streamed token.
        total_s: Seconds for the whole request.
        finish_reason: ``stop``, ``length`` or ``error``.
        harness_s: Seconds spent in this toolkit's code (and its caller's) between streamed
            pieces, the benchmark harness's own cost.
        setup_s: Seconds of the time to first token spent opening the runtime's session and
            request, before the runtime started on the prompt.
        tool_calls: OpenAI ``tool_calls`` (``id``, ``type``, ``function.name``, ``function.arguments``
            as a JSON string) when the model called tools (``finish_reason`` ``tool_calls``).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    finish_reason: str
    harness_s: float = 0.0
    setup_s: float = 0.0
    tool_calls: tuple[dict, ...] = ()

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one."""
        return decode_tps(self.completion_tokens, self.ttft_s, self.total_s)


@dataclass(frozen=True)
class Usage:
    """What the runtime counted for one request, and why it stopped (the end of a chunk stream)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def as_openai(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def native_response_format(response_format: dict | None) -> dict | None:
    """OpenAI's ``response_format`` in the form Foundry Local's constrained decoding takes.

    OpenAI wraps a schema as ``{"name", "schema", "strict"}``; the runtime wants the schema
    object itself under ``json_schema`` (a string fails natively). ``text`` means no constraint.
    """
    if not response_format or response_format.get("type") == "text":
        return None
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            inner = inner["schema"]
        return {"type": "json_schema", "json_schema": inner}
    return dict(response_format)


def check_stop(stop: object) -> list[str]:
    """``stop`` as a list of at most four non-empty strings (OpenAI's rule)."""
    items = [stop] if isinstance(stop, str) else stop
    if stop is None:
        return []
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise InvalidOptionError("stop", stop, "a non-empty string or a list of up to 4 of them")
    return items


def check_response_format(response_format: object) -> None:
    """Refuse a ``response_format`` the runtime cannot constrain to.

    Raises:
        InvalidOptionError: not ``text``, ``json_object`` or ``json_schema`` with a valid JSON Schema.
    """
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidOptionError("response_format", response_format,
                                 "{'type': 'text' | 'json_object' | 'json_schema', ...}")
    if kind == "json_schema":
        import jsonschema

        schema = native_response_format(response_format)["json_schema"]
        if not isinstance(schema, dict):
            raise InvalidOptionError("response_format", response_format,
                                     "json_schema as {'name': ..., 'schema': {a JSON Schema object}}")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InvalidOptionError("response_format", "json_schema",
                                     f"a valid JSON Schema ({exc.message})") from exc


def well_formed(message: object) -> bool:
    """An OpenAI chat message this runtime takes: text content, an assistant's tool calls, a tool's result."""
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        return False
    content, calls = message.get("content"), message.get("tool_calls")
    if message["role"] == "assistant" and calls:
        return isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str) and isinstance(c["function"].get("arguments"), str)
            for c in calls) and (content is None or isinstance(content, str))
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        return False
    return isinstance(content, str)


def merge_tool_call_deltas(calls: dict[int, dict], deltas: list[dict]) -> None:
    """Fold streamed ``delta.tool_calls`` pieces into whole calls (keyed by ``index``), as OpenAI clients do."""
    for piece in deltas:
        call = calls.setdefault(int(piece.get("index", 0)),
                                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = piece.get("id") or call["id"]
        function = piece.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

