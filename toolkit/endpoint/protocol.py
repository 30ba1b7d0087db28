"""The OpenAI wire format: request models (pydantic), error answers and the ``chat.completion`` object."""

from __future__ import annotations

import json
import secrets
import time
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.runtimes.foundry_requests import Usage, merge_tool_call_deltas


class ApiError(Exception):
    """An OpenAI-style error answer.

    Attributes:
        status: HTTP status.
        message: What is wrong and what to do.
        type: OpenAI's error type (``invalid_request_error``, ...).
        param: The request field at fault, if one is.
        code: A machine-readable code.
    """

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """The JSON body: ``{"error": {...}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    # Strict: "5" is not a number and true is not 1. Unknown fields are ignored, as OpenAI clients
    # send some (user, logprobs: false...); those that would change the answer are refused instead.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    """The function of an assistant's tool call: its name and arguments (a JSON string)."""

    name: str
    arguments: str


class ToolCall(_Strict):
    """One tool call of an assistant turn in the history."""

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    """One chat message (``developer`` is served as ``system``); an assistant turn may carry tool calls, a tool turn a result."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Strict):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class ChatRequest(_Strict):
    """The ``POST /v1/chat/completions`` body this endpoint accepts (OpenAI's names and ranges)."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**31)  # the runtime parses it as a 32-bit int
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: dict | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    # Accepted at OpenAI's neutral values only: the runtime has no such options, and ignoring them would answer
    # something else than what was asked.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None



def plain_messages(request: ChatRequest) -> list[dict]:
    """Messages as the runtime takes them: text content (parts joined), ``developer`` as ``system``, tool calls and results."""
    out = []
    called: set[str] = set()  # the tool-call ids of the assistant turns so far
    for message in request.messages:
        content = message.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        if content is None and not message.tool_calls:
            raise ApiError(400, f"Invalid request: a {message.role} message needs 'content'.", param="messages",
                           code="invalid_value")
        plain: dict = {"role": "system" if message.role == "developer" else message.role, "content": content}
        if message.tool_calls:
            plain["tool_calls"] = [call.model_dump() for call in message.tool_calls]
            called.update(call.id for call in message.tool_calls)
        if message.role == "tool":
            if not message.tool_call_id:
                raise ApiError(400, "Invalid request: a tool message needs the 'tool_call_id' it answers.",
                               param="messages", code="invalid_value")
            if message.tool_call_id not in called:  # the runtime fails such a history
                raise ApiError(400, f"Invalid request: the tool message answers {message.tool_call_id!r}, which no "
                                    "earlier assistant message's 'tool_calls' holds; send the assistant turn that "
                                    "called the tool before its result.", param="messages", code="invalid_value")
            plain["tool_call_id"] = message.tool_call_id
        out.append(plain)
    return out


def validation_error(exc: ValidationError) -> ApiError:
    """A pydantic ValidationError as a 400 naming the field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return ApiError(400, f"Invalid request: {param or 'body'}: {first['msg']}.", param=param, code="invalid_value")


async def read_body(request: Request, limit: int) -> dict:
    """The request's JSON object, refusing over-long and malformed bodies before parsing more than ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body is {int(declared)} bytes; the limit is {limit}.",
                       code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"The request body is over the limit of {limit} bytes.", code="body_too_large")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The body is not valid JSON ({exc}); send a JSON object.", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return body


def runtime_failure(exc: Exception) -> ApiError:
    """A failure inside the runtime as a 500 error answer."""
    return ApiError(500, str(exc) if isinstance(exc, SlmopsError) else f"Internal error: {type(exc).__name__}: {exc}",
                    type="server_error", code="runtime_error")


def completion(chunks: list[str], usage: Usage, model: str) -> dict:
    """The ``chat.completion`` object the runtime's streamed chunks of one answer make up (OpenAI's shape)."""
    parsed = [json.loads(chunk) for chunk in chunks]
    text: list[str] = []
    calls: dict[int, dict] = {}
    reason = usage.finish_reason
    for chunk in parsed:
        choice = (chunk.get("choices") or [{}])[0]
        delta = choice.get("delta") or {}
        text.append(delta.get("content") or "")
        merge_tool_call_deltas(calls, delta.get("tool_calls") or [])
        reason = choice.get("finish_reason") or reason
    message: dict = {"role": "assistant", "content": "".join(text), "refusal": None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
        message["content"] = message["content"] or None  # as OpenAI answers a turn that only calls tools
    first = parsed[0] if parsed else {}
    return {"id": first.get("id") or f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion",
            "created": first.get("created") or int(time.time()), "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
            "usage": usage.as_openai()}


def error_response(error: ApiError, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after or 1)} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)

