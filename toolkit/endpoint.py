"""The HTTP interface: serve registered models to applications through an OpenAI-compatible API.

Foundry Local's own web service is used where it serves locally registered models
(:func:`~slmops.toolkit.runtimes.foundry.probe_web_service`); foundry-local-sdk 2.2.1's does not
(it looks models up in the online catalog), so this module serves the same runtime
in-process on FastAPI and uvicorn:

* ``GET /v1/models``, ``GET /v1/models/{id}``; ``GET /health`` (each model's state, requests
  waiting and generating) and ``GET /metrics`` (Prometheus: requests by status, queue depth,
  requests in flight, time to first token and per output token, tokens in and out);
* ``POST /v1/chat/completions``, plain and ``stream: true`` (server-sent events), with
  ``usage`` and ``finish_reason``; ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
  ``stop``, and ``response_format`` (``json_object``, ``json_schema``) through Foundry
  Local's constrained decoding; ``tools`` and ``tool_choice`` (``none``, ``auto``,
  ``required``, a named function) answered with ``message.tool_calls`` and
  ``finish_reason: "tool_calls"`` (streamed as ``delta.tool_calls``), the arguments constrained
  by the runtime to each tool's JSON Schema, and histories with ``assistant`` tool calls and
  ``tool`` results.

Requests are checked before the runtime sees them and refused as OpenAI-style JSON errors
(400 bad request or value, 401 missing key, 404 unknown model, 413 body too large, 503 while
a model loads or when its queue is full, with ``Retry-After``, 504 past the request timeout,
500 when the runtime fails); the connection stays open and the server keeps serving after any
of them. Each model answers one request at a time in its own thread (at most ``max_queue``
others wait, in arrival order), so generations never interleave. A request whose client leaves,
streamed or not, stops at its model's next token and frees it (a waiting one leaves the queue).
SIGTERM shuts down gracefully: in-flight requests finish, then the models unload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from slmops.toolkit.core import settings, workers
from slmops.toolkit.core.errors import InputError, PromptTooLongError, SlmopsError
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.runtimes.foundry import LoadedModel, Usage, find_model, merge_tool_call_deltas

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_BODY_BYTES = 4 * 1024 * 1024  # a long chat history is tens of KB; 4 MiB leaves room and stops floods
SHUTDOWN_GRACE_S = 60  # how long in-flight requests may take to finish after SIGTERM
# Streamed pieces go out together at most this often (each at once when tokens come slower; the first at
# once). Waking the server for every token at hundreds a second takes CPU from decode where ONNX Runtime's
# threads use every core; 50 ms (20 updates a second) keeps decode at in-process speed (docs: benchmarks page).
STREAM_INTERVAL_S = 0.05
# Requests that may wait for a model behind the one it generates. Each model answers one request at a time, so
# the wait grows with the queue times a whole generation; past a few dozen, a request would wait minutes, longer
# than clients usually wait (the openai client gives up at 600 s), so it is told at once to come back instead.
DEFAULT_MAX_QUEUE = 32
# The openai client's own default timeout: a request older than this has no default client waiting for it.
DEFAULT_REQUEST_TIMEOUT_S = 600.0
# How often a request that is waiting or generating checks that its client is still there (and its deadline):
# a client that leaves frees its model within this and one decode step.
DISCONNECT_POLL_S = 0.02


class ModelState(StrEnum):
    """Where a served model is."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


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


class ModelHost:
    """One served model: loaded in the background, then answering one request at a time in its own thread."""

    def __init__(self, name: str, cache: str | Path | None) -> None:
        self.name, self.cache = name, cache
        self.state = ModelState.LOADING
        self.error = ""
        self.model: LoadedModel | None = None
        self.created = int(time.time())
        # One thread per model, entered through one slot: requests queue in arrival order (on the event loop,
        # where one that is dropped leaves the queue at once) and a generation is never interleaved.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"serve-{name}")
        self.slot = asyncio.Lock()
        self.waiting = 0  # requests queued for the slot
        self.in_flight = 0  # requests generating (0 or 1)
        self.mean_s = 0.0  # moving mean of a generation's seconds, for Retry-After

    def note_duration(self, seconds: float) -> None:
        """Keep a moving mean of how long the model holds its slot per request."""
        self.mean_s = seconds if not self.mean_s else 0.8 * self.mean_s + 0.2 * seconds

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has likely moved by one request (at least 1)."""
        return max(1, math.ceil(self.mean_s))

    def health(self) -> dict:
        """The model's ``/health`` entry: its state, requests waiting and generating, and a load failure."""
        entry: dict = {"state": self.state.value, "waiting": self.waiting, "in_flight": self.in_flight}
        if self.error:
            entry["error"] = self.error
        return entry

    def load(self) -> None:
        """Load the model (runs in the loader thread); a failure is kept and reported to requests."""
        try:
            self.model = LoadedModel(self.name, self.cache)
            self.state = ModelState.READY
        except Exception as exc:  # noqa: BLE001 (the failure is served to clients as a 503)
            self.error, self.state = f"{type(exc).__name__}: {exc}", ModelState.FAILED

    def close(self) -> None:
        """Let queued requests finish, then unload."""
        self.executor.shutdown(wait=True)
        if self.model is not None:
            self.model.close()

    def describe(self) -> dict:
        """The model's ``/v1/models`` entry."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "slmops",
                "status": self.state.value}


def _plain_messages(request: ChatRequest) -> list[dict]:
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


def _validation_error(exc: ValidationError) -> ApiError:
    """A pydantic ValidationError as a 400 naming the field."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    return ApiError(400, f"Invalid request: {param or 'body'}: {first['msg']}.", param=param, code="invalid_value")


async def _read_body(request: Request, limit: int) -> dict:
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


def _runtime_body(host: ModelHost, request: ChatRequest) -> dict:
    """Check a parsed request against the model (context, options) and build the runtime's request."""
    if request.logprobs:
        raise ApiError(400, "logprobs are not supported by this endpoint.", param="logprobs")
    for param in ("frequency_penalty", "presence_penalty", "logit_bias"):
        if getattr(request, param):  # 0, 0.0, {} and null are OpenAI's defaults: nothing asked
            raise ApiError(400, f"{param} is not supported by this endpoint (Foundry Local's runtime has no such "
                                "option); leave it out. A repetition penalty is set when the model is registered "
                                "(slmops register --repetition-penalty).", param=param)
    messages = _plain_messages(request)
    max_tokens = request.max_completion_tokens or request.max_tokens
    seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
    options = {"top_p": request.top_p, "stop": request.stop, "response_format": request.response_format,
               "tool_defs": request.tools, "tool_choice": request.tool_choice}
    try:
        host.model.check(messages, max_tokens, request.temperature, seed, **options)
    except PromptTooLongError as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from exc
    except InputError as exc:
        raise ApiError(400, str(exc), param=getattr(exc, "name", None), code="invalid_value") from exc
    if max_tokens is None:  # as OpenAI's API: up to the end of the context (the runtime's default may not fit)
        max_tokens = host.model.room(messages, request.tools, request.tool_choice)
    body = host.model.body(messages, max_tokens=max_tokens, temperature=request.temperature, seed=seed,
                           stream=request.stream, **options)
    if request.parallel_tool_calls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


class Metrics:
    """The endpoint's Prometheus metrics (``GET /metrics``), in a registry of its own per application.

    Names follow vLLM's where one exists (``time_to_first_token_seconds``, ``time_per_output_token_seconds``,
    ``prompt_tokens_total``, ``generation_tokens_total``), under the ``slmops_`` prefix.
    """

    def __init__(self, names: Sequence[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("slmops_requests", "HTTP requests answered, by route, model and status",
                                ["path", "model", "status"], registry=self.registry)
        self.waiting = Gauge("slmops_queue_depth", "Requests waiting for their model", ["model"],
                             registry=self.registry)
        self.in_flight = Gauge("slmops_requests_in_flight", "Requests their model is generating", ["model"],
                               registry=self.registry)
        self.ttft = Histogram("slmops_time_to_first_token_seconds",
                              "Seconds from a request's arrival (queue included) to its first token", ["model"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                              registry=self.registry)
        self.tpot = Histogram("slmops_time_per_output_token_seconds", "Seconds per generated token after the first",
                              ["model"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                              registry=self.registry)
        self.prompt_tokens = Counter("slmops_prompt_tokens", "Prompt tokens processed", ["model"],
                                     registry=self.registry)
        self.generation_tokens = Counter("slmops_generation_tokens", "Tokens generated", ["model"],
                                         registry=self.registry)
        for name in names:  # every served model's series exist from the start (at 0), so rates are defined
            for family in (self.waiting, self.in_flight, self.ttft, self.tpot, self.prompt_tokens,
                           self.generation_tokens):
                family.labels(model=name)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Gone(Exception):
    """The client closed the connection before its answer was ready."""


_END = object()


class _Timeout:
    """Handed to the consumer when a generation ran past the request's deadline."""


class Job:
    """One request's generation: it waits for its model's slot, then runs in the model's thread.

    The job is a task of its own, so a client that leaves (or a deadline that passes) never
    releases the slot while the runtime still generates: :meth:`drop` sets :attr:`gone`, the
    generation stops at its next token, and only then is the slot free. A job still waiting for
    the slot is removed from the queue at once.
    """

    def __init__(self, host: ModelHost, body: dict, *, interval_s: float, deadline: float | None,
                 metrics: Metrics, arrived: float) -> None:
        self.host, self.body, self.interval_s, self.deadline = host, body, interval_s, deadline
        self.metrics, self.arrived = metrics, arrived
        self.queue: asyncio.Queue = asyncio.Queue()
        self.gone = threading.Event()
        self.started = False
        self.first_token_s: float | None = None  # seconds from arrival to the first token
        self.usage: Usage | None = None
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        host, name = self.host, self.host.name
        host.waiting += 1
        self.metrics.waiting.labels(model=name).inc()
        try:
            async with host.slot:  # FIFO: asyncio.Lock wakes its waiters in arrival order
                host.waiting -= 1
                self.metrics.waiting.labels(model=name).dec()
                self.started = True
                host.in_flight += 1
                self.metrics.in_flight.labels(model=name).inc()
                start = time.perf_counter()
                try:
                    if not self.gone.is_set():
                        # Shielded: the slot is released only once the runtime's generation has ended.
                        await asyncio.shield(self.loop.run_in_executor(host.executor, self._produce))
                finally:
                    host.in_flight -= 1
                    self.metrics.in_flight.labels(model=name).dec()
                    host.note_duration(time.perf_counter() - start)
        finally:
            if not self.started:
                host.waiting -= 1
                self.metrics.waiting.labels(model=name).dec()

    def _produce(self) -> None:
        """The model thread: stream the runtime's chunks to the event loop, stopping when the job is dropped."""
        pending: list = []
        last, count = 0.0, 0
        try:
            for item in self.host.model.native_stream(self.body):
                pending.append(item)
                count += 1
                now = time.perf_counter()
                if count == 2:  # the role chunk, then the first token
                    self.first_token_s = now - self.arrived
                if isinstance(item, Usage):
                    self.usage = item
                # The role chunk and the first token go at once: the time to first token is not delayed.
                if count <= 2 or now - last >= self.interval_s or isinstance(item, Usage):
                    self.loop.call_soon_threadsafe(self.queue.put_nowait, pending)
                    pending, last = [], now
                if self.gone.is_set():
                    break  # closing the runtime's stream cancels the generation
                if self.deadline is not None and time.monotonic() > self.deadline:
                    pending.append(_Timeout())
                    break
        except Exception as exc:  # noqa: BLE001 (answered to the client as a JSON error)
            pending.append(exc)
        finally:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, [*pending, _END])

    def drop(self) -> None:
        """The client left or the deadline passed: stop generating at the next token, or leave the queue now."""
        self.gone.set()
        if not self.started:
            self.task.cancel()

    async def next_items(self, request: Request | None, poll_s: float) -> list:
        """The next pieces the model thread handed over.

        Args:
            request: Watched for a client that leaves (None: not watched, as a streamed response is
                watched by Starlette itself).
            poll_s: How often the connection and the deadline are checked, in seconds.

        Raises:
            _Gone: the client left (the job is dropped).
            ApiError: 504 when the request's deadline passed before its answer was ready (the job is dropped).
        """
        while True:
            wait = poll_s if self.deadline is None else max(0.0, min(poll_s, self.deadline - time.monotonic()))
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=wait)
            except TimeoutError:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.drop()
                    raise self.timeout_error() from None
                if request is not None and await request.is_disconnected():
                    self.drop()
                    raise _Gone from None

    def timeout_error(self) -> ApiError:
        """The 504 of a request that ran past its deadline."""
        where = "generating" if self.started else "waiting for the model"
        return ApiError(504, f"The request ran past the server's --request-timeout while {where}; ask for fewer "
                             "tokens or retry later.", type="server_error", code="timeout")

    def record(self) -> None:
        """Count a finished generation's tokens and timings in the metrics."""
        name = self.host.name
        if self.usage is None:
            return
        self.metrics.prompt_tokens.labels(model=name).inc(self.usage.prompt_tokens)
        self.metrics.generation_tokens.labels(model=name).inc(self.usage.completion_tokens)
        if self.first_token_s is not None and self.usage.completion_tokens:
            self.metrics.ttft.labels(model=name).observe(self.first_token_s)
            if self.usage.completion_tokens > 1:
                decode_s = time.perf_counter() - self.arrived - self.first_token_s
                self.metrics.tpot.labels(model=name).observe(decode_s / (self.usage.completion_tokens - 1))


def _runtime_failure(exc: Exception) -> ApiError:
    """A failure inside the runtime as a 500 error answer."""
    return ApiError(500, str(exc) if isinstance(exc, SlmopsError) else f"Internal error: {type(exc).__name__}: {exc}",
                    type="server_error", code="runtime_error")


def _completion(chunks: list[str], usage: Usage, model: str) -> dict:
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


def _error_response(error: ApiError, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after or 1)} if error.status == 503 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class Guard:
    """Pure ASGI middleware around the whole application: API key, the access log and request metrics, and a
    JSON 500 for any exception that escaped.

    An exception must never leave the application: Starlette's outermost middleware answers it
    with a 500 and then raises it again, and uvicorn closes a connection whose application
    raised, after the answer, so a client's next request on that kept-alive connection was reset.
    """

    def __init__(self, app, *, api_key: str | None, metrics: Metrics, log_requests: bool) -> None:
        self.app, self.api_key, self.metrics, self.log_requests = app, api_key, metrics, log_requests

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info = scope["slmops"] = {"model": "", "status": 0, "usage": None}
        sent = False

        async def watched_send(message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent, info["status"] = True, message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"] not in ("/health", "/metrics"):
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                    error = ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                     type="authentication_error", code="invalid_api_key")
                    await _error_response(error)(scope, receive, watched_send)
                    return
            await self.app(scope, receive, watched_send)
        except Exception as exc:  # noqa: BLE001 (answered as JSON; re-raising would drop the connection)
            print(f"Internal error on {scope['method']} {scope['path']}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
            if not sent:
                await _error_response(ApiError(500, f"Internal error: {type(exc).__name__}: {exc}",
                                               type="server_error"))(scope, receive, watched_send)
        finally:
            self.finish(scope, info, time.perf_counter() - start)

    def finish(self, scope, info: dict, seconds: float) -> None:
        """Count the request and write its access-log line."""
        path = scope["path"] if scope["path"] in _ROUTES else "other"
        self.metrics.requests.labels(path=path, model=info["model"], status=str(info["status"] or 0)).inc()
        if self.log_requests:
            usage = info["usage"]
            tokens = f"{usage.prompt_tokens}+{usage.completion_tokens}" if usage is not None else "-"
            print(f'{scope["method"]} {scope["path"]} model={info["model"] or "-"} status={info["status"] or "-"} '
                  f"tokens={tokens} ms={seconds * 1000:.0f}", file=sys.stderr, flush=True)


_ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions"})


def create_app(names: Sequence[str], *, cache: str | Path | None = None, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, stream_interval_s: float = STREAM_INTERVAL_S,
               max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
               log_requests: bool = False):
    """The ASGI application serving ``names`` (loaded in the background when it starts).

    Args:
        names: Registered model names.
        cache: Foundry cache (see :func:`slmops.toolkit.core.settings.cache_dir`).
        api_key: When set, every request but ``/health`` and ``/metrics`` needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: Largest request body accepted.
        stream_interval_s: Streamed pieces go out together at most this often (0: every token at once).
        max_queue: Requests that may wait for each model behind the one it generates; more get a 503
            with ``Retry-After``.
        request_timeout_s: Seconds a request may take from its arrival, queue included (None: no
            limit); past it the generation stops and the client gets a 504 (an error event when
            streaming had begun).
        log_requests: Write one access-log line per request to stderr.
    """
    hosts = {name: ModelHost(name, cache) for name in names}
    metrics = Metrics(names)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        def load_all() -> None:  # one after another: the runtime's manager is shared
            for host in hosts.values():
                start = time.perf_counter()
                host.load()
                outcome = "ready" if host.state is ModelState.READY else f"failed to load: {host.error}"
                print(f"{host.name}: {outcome} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

        loader = threading.Thread(target=load_all, name="serve-loader", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        for host in hosts.values():
            await asyncio.to_thread(host.close)
        print("Stopped: in-flight requests finished, models unloaded.", file=sys.stderr, flush=True)

    app = FastAPI(title="slmops OpenAI-compatible endpoint", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hosts = hosts
    app.state.metrics = metrics

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404
                                     else None).body(), status_code=exc.status_code)

    def ready_host(name: str) -> ModelHost:
        host = hosts.get(name)
        if host is None:
            raise ApiError(404, f"The model {name!r} is not served here; served: {sorted(hosts)}.", param="model",
                           code="model_not_found")
        if host.state is ModelState.LOADING:
            raise ApiError(503, f"The model {name!r} is loading; retry in a moment.", type="server_error",
                           code="model_loading")
        if host.state is ModelState.FAILED:
            raise ApiError(503, f"The model {name!r} failed to load: {host.error}", type="server_error",
                           code="model_failed")
        return host

    @app.get("/health")
    async def health():
        models = {name: host.health() for name, host in hosts.items()}
        ok = all(model["state"] == ModelState.READY for model in models.values())
        return JSONResponse({"status": "ok" if ok else "loading", "models": models}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus():
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [host.describe() for host in hosts.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        if name not in hosts:
            raise ApiError(404, f"The model {name!r} is not served here; served: {sorted(hosts)}.",
                           param="model", code="model_not_found")
        return hosts[name].describe()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrived, arrived_at = time.perf_counter(), time.monotonic()
        raw = await _read_body(request, max_body_bytes)
        try:
            parsed = ChatRequest.model_validate(raw)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        info = request.scope.get("slmops", {})
        host = ready_host(parsed.model)
        info["model"] = host.name
        body = _runtime_body(host, parsed)
        if host.waiting >= max_queue:
            error = ApiError(503, f"The model {host.name!r} has {host.waiting} requests waiting (the server's "
                                  f"--max-queue); retry later.", type="server_error", code="queue_full")
            return _error_response(error, host.retry_after_s())
        deadline = arrived_at + request_timeout_s if request_timeout_s else None
        job = Job(host, body, interval_s=stream_interval_s if parsed.stream else float("inf"), deadline=deadline,
                  metrics=metrics, arrived=arrived)
        try:
            items = await job.next_items(request, DISCONNECT_POLL_S)  # the role chunk, or why there is none
            while not parsed.stream and items[-1] is not _END:
                items += await job.next_items(request, DISCONNECT_POLL_S)
        except _Gone:
            return Response(status_code=499)  # nobody reads it: the client has left
        except BaseException:
            job.drop()  # whatever went wrong here, the model is not left generating for nobody
            raise
        first = items
        if not parsed.stream:
            job.record()
            info["usage"] = job.usage
            chunks = [item for item in items if isinstance(item, str)]
            for item in items:
                if isinstance(item, _Timeout):
                    raise job.timeout_error()
                if isinstance(item, Exception):
                    raise _runtime_failure(item)
            return _completion(chunks, job.usage, parsed.model)
        for item in first:
            if isinstance(item, Exception):  # refused before anything was generated: a real error status
                raise _runtime_failure(item)
            if isinstance(item, _Timeout):
                raise job.timeout_error()
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return StreamingResponse(_sse(job, first, include_usage, info), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # Inside Starlette's outermost middleware, so that no exception reaches it (see Guard).
    app.add_middleware(Guard, api_key=api_key, metrics=metrics, log_requests=log_requests)
    return app


async def _sse(job: Job, first: list, include_usage: bool, info: dict) -> AsyncIterator[str]:
    """Server-sent events of one streamed generation (see :class:`Job`), starting with the pieces ``first``.

    Pieces come together at most every ``stream_interval_s`` (the first and the end at once; see
    :data:`STREAM_INTERVAL_S`). A client that goes away drops its job (Starlette cancels this
    generator), so the generation stops and the queue moves on.
    """
    chunk_id = None
    items = first
    try:
        while True:
            events = []
            for item in items:
                if item is _END:
                    job.record()
                    info["usage"] = job.usage
                    yield "".join(events) + "data: [DONE]\n\n"
                    return
                if isinstance(item, _Timeout):
                    error = job.timeout_error()
                    yield "".join(events) + f"data: {json.dumps(error.body())}\n\n"
                    return
                if isinstance(item, Exception):
                    yield "".join(events) + f"data: {json.dumps(_runtime_failure(item).body())}\n\n"
                    return
                if isinstance(item, Usage):
                    if include_usage:
                        usage = {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
                                 "model": job.body["model"], "choices": [], "usage": item.as_openai()}
                        events.append(f"data: {json.dumps(usage)}\n\n")
                    continue
                if chunk_id is None:
                    chunk_id = json.loads(item).get("id")
                events.append(f"data: {item}\n\n")
            if events:
                yield "".join(events)
            try:
                items = await job.next_items(None, DISCONNECT_POLL_S)
            except ApiError as error:  # the deadline passed between tokens: the status has gone already
                yield f"data: {json.dumps(error.body())}\n\n"
                return
    finally:
        job.drop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(names: Sequence[str], host: str, port: int, api_key: str | None,
                  cache: str | Path | None = None) -> None:
    """Refuse a server that would be unsafe or cannot start, before anything is loaded.

    Raises:
        InputError: no names, a port out of range, a non-loopback host without an API key, or an
            empty key.
        ModelNotFoundError: a name that is not registered.
    """
    if not names:
        raise InputError("Name at least one registered model to serve (`slmops ls` lists them).")
    if type(port) is not int or not 0 <= port <= 65535:
        raise InputError(f"--port {port!r} is not a port: use a whole number from 1 to 65535 (0: any free port).")
    if api_key is not None and (not api_key.strip() or any(c.isspace() for c in api_key)):
        raise InputError("--api-key must be a non-empty token without spaces.")
    if not _is_loopback(host) and api_key is None:
        raise InputError(f"Serving on {host} makes the models reachable from other machines: give --api-key KEY "
                         "(clients send it as a bearer token), or keep the default --host 127.0.0.1.")
    for name in names:
        find_model(name, cache)


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def run(names: Sequence[str], *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str | None = None,
        cache: str | Path | None = None, log_level: str = "warning",
        stream_interval_s: float = STREAM_INTERVAL_S, max_queue: int = DEFAULT_MAX_QUEUE,
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, log_requests: bool = False) -> None:
    """Serve ``names`` until SIGTERM or Ctrl-C (both graceful); see the module docstring.

    Raises:
        InputError, ModelNotFoundError: from :func:`check_options`, before anything starts.
        InputError: the port is taken, or an option is out of range.
    """
    import uvicorn

    check_options(names, host, port, api_key, cache)
    if not 0 <= stream_interval_s <= 10:
        raise InputError(f"--stream-interval-ms {stream_interval_s * 1000:g} is out of range: use 0 to 10000.")
    if type(max_queue) is not int or max_queue < 0:
        raise InputError(f"--max-queue {max_queue!r} is not a count: use a whole number from 0 (no waiting).")
    if request_timeout_s is not None and not request_timeout_s > 0:
        raise InputError(f"--request-timeout {request_timeout_s!r} is out of range: use seconds above 0 "
                         "(or leave it out for the default).")
    with socket.socket() as probe:  # a taken port is the user's to change, not a traceback
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port.") from exc
    if api_key is None and foundry.probe_web_service(names[0], cache).serves:
        foundry.serve_natively(list(names), host, port, cache)  # the runtime's own service (it has no API keys)
        return
    app = create_app(names, cache=cache, api_key=api_key, stream_interval_s=stream_interval_s, max_queue=max_queue,
                     request_timeout_s=request_timeout_s, log_requests=log_requests)
    print(f"Serving {', '.join(names)} at http://{host}:{port}/v1 (OpenAI-compatible, "
          f"{'bearer key required' if api_key else 'no key'}); loading. Ctrl-C or SIGTERM stops it once in-flight "
          "requests finish.", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    uvicorn.Server(config).run()


@dataclass(frozen=True)
class Endpoint:
    """A running endpoint in a child process (see :func:`background`).

    Attributes:
        url: Its OpenAI base URL (``http://host:port/v1``).
        api_key: The key clients send (``"none"`` when the endpoint needs none: OpenAI's client wants one).
        service: The child process.
    """

    url: str
    api_key: str
    service: workers.Service

    def client(self, **options):
        """An official ``openai.OpenAI`` client for this endpoint."""
        import openai

        return openai.OpenAI(base_url=self.url, api_key=self.api_key, **options)

    def stop(self) -> int:
        """Stop it gracefully (SIGTERM); the child's exit code."""
        return self.service.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def background(names: Sequence[str], *, port: int | None = None, cache: str | Path | None = None,
               api_key: str | None = None, log_path: Path | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, log_requests: bool = False):
    """Start the endpoint for ``names`` in a child process, yield an :class:`Endpoint` once every model is loaded.

    ``max_queue``, ``request_timeout_s`` and ``log_requests`` are :func:`create_app`'s (the log goes to ``log_path``).

    Example:
        >>> with background(["smollm2-int4"]) as endpoint:
        ...     endpoint.client().chat.completions.create(model="smollm2-int4", messages=[...])
    """
    check_options(names, DEFAULT_HOST, port or 0, api_key, cache)
    port = port or free_port()
    root = f"http://{DEFAULT_HOST}:{port}"
    args = [*names, "--host", DEFAULT_HOST, "--port", str(port), "--cache-dir", str(settings.cache_dir(cache))]
    if api_key:
        args += ["--api-key", api_key]
    args += ["--max-queue", str(max_queue), "--request-timeout", str(request_timeout_s or 0)]
    if log_requests:
        args.append("--log-requests")
    log = log_path or settings.cache_dir(cache) / ".logs" / f"serve-{port}.log"
    service = workers.start_service(workers.python_module("slmops.toolkit.endpoint", *args), log_path=log,
                                    name=f"endpoint for {', '.join(names)}", ready=lambda: _healthy(root))
    with service:
        yield Endpoint(f"{root}/v1", api_key or "none", service)


def ask_once(name: str, question: str, *, cache: str | Path | None = None, max_tokens: int = 32) -> str:
    """Start the endpoint in the background, ask ``name`` one question through the ``openai`` client, stop it.

    Returns:
        One line: the endpoint's address, the answer and the tokens it cost.
    """
    with background([name], cache=cache) as endpoint:
        answer = endpoint.client().chat.completions.create(
            model=name, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0)
        return f"{endpoint.url} answered: {answer.choices[0].message.content!r} ({answer.usage.total_tokens} tokens)"


def call_tool_once(name: str, case: dict | None, *, cache: str | Path | None = None,
                   result: str = '{"sky": "rain", "temperature_c": 11}') -> list[str]:
    """Offer ``case``'s tools to ``name`` through the endpoint; answer its call with ``result``; return what happened.

    Args:
        name: A registered model.
        case: ``{"messages": [...], "tools": [...]}``, a tool question and the OpenAI tools it may call
            (None: the model learned no tool calls, and that is what comes back).
        cache: The Foundry Local cache.
        result: The JSON the tool answers with (sent back as a ``tool`` message).

    Returns:
        Lines: each call the model made with its arguments and finish reason, then its answer from the result
        (or its plain answer when it called nothing).
    """
    if case is None:
        return [f"{name} learned no tool calls (only the bundled fine-tune of a model with tool tokens does)."]
    with background([name], cache=cache) as endpoint:
        client = endpoint.client()
        asked = client.chat.completions.create(model=name, messages=case["messages"], tools=case["tools"],
                                               max_tokens=64, temperature=0)
        message = asked.choices[0].message
        lines = [f"{case['messages'][-1]['content']!r} -> {call.function.name}({call.function.arguments}) "
                 f"[finish_reason {asked.choices[0].finish_reason}]" for call in message.tool_calls or []]
        if not message.tool_calls:
            return [*lines, f"no call: {message.content!r}"]
        back = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": result}
        answer = client.chat.completions.create(model=name, messages=[*case["messages"], message, back],
                                                tools=case["tools"], max_tokens=48, temperature=0)
        return [*lines, f"after the result: {answer.choices[0].message.content!r}"]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m slmops.toolkit.endpoint NAME... [--host H] [--port N] [--api-key K] [--cache-dir D] [--max-queue N]
    [--request-timeout S] [--log-requests]`` (the child)."""
    parser = argparse.ArgumentParser(prog="python -m slmops.toolkit.endpoint")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key")
    parser.add_argument("--cache-dir")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE)
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    parser.add_argument("--log-requests", action="store_true")
    args = parser.parse_args(argv)
    try:
        run(args.names, host=args.host, port=args.port, api_key=args.api_key, cache=args.cache_dir,
            max_queue=args.max_queue, request_timeout_s=args.request_timeout or None, log_requests=args.log_requests)
    except SlmopsError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
