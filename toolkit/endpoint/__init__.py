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
of them. Each model decodes up to ``batch_size`` requests together (continuous batching,
:mod:`slmops.toolkit.runtimes.batching`; at most ``max_queue`` others wait, in arrival order);
``response_format`` and ``tools`` run on Foundry Local one at a time. A request whose client
leaves, streamed or not, stops at its next token and frees its slot (a waiting one leaves the queue).
SIGTERM shuts down gracefully: in-flight requests finish, then the models unload.
:func:`run_ray` (``slmops serve --ray``) serves the same application as Ray Serve replicas of
each model across a Ray cluster (:mod:`.replicas`).

The package is split as vLLM's OpenAI server is: :mod:`.protocol` (the wire format), :mod:`.hosts`
and :mod:`.jobs` (the served models and one request's generation), :mod:`.serving` (the chat
completions service), :mod:`.app` (the FastAPI routes and middleware), :mod:`.metrics`,
:mod:`.options` (limits and defaults) and :mod:`.cli` (starting it; ``python -m slmops.toolkit.endpoint``).
"""

from __future__ import annotations

from slmops.toolkit.endpoint.app import create_app
from slmops.toolkit.endpoint.cli import (
    Endpoint,
    ask_once,
    background,
    call_tool_once,
    check_options,
    free_port,
    main,
    run,
    run_ray,
)
from slmops.toolkit.endpoint.hosts import ModelHost, ModelState
from slmops.toolkit.endpoint.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_HOST,
    DEFAULT_MAX_QUEUE,
    DEFAULT_POLICY,
    DEFAULT_PORT,
    DEFAULT_PREFIX_CACHE_MIB,
    DEFAULT_REQUEST_TIMEOUT_S,
    DISCONNECT_POLL_S,
    MAX_BODY_BYTES,
    MAX_PREFIX_CACHE_MIB,
    STREAM_INTERVAL_S,
    ServeOptions,
)
from slmops.toolkit.endpoint.protocol import ApiError, ChatRequest
from slmops.toolkit.endpoint.replicas import DEFAULT_REPLICA_CPUS
from slmops.toolkit.runtimes.batching import Policy

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_HOST",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_POLICY",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX_CACHE_MIB",
    "DEFAULT_REPLICA_CPUS",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DISCONNECT_POLL_S",
    "MAX_BODY_BYTES",
    "MAX_PREFIX_CACHE_MIB",
    "STREAM_INTERVAL_S",
    "ApiError",
    "ChatRequest",
    "Endpoint",
    "ModelHost",
    "ModelState",
    "Policy",
    "ServeOptions",
    "ask_once",
    "background",
    "call_tool_once",
    "check_options",
    "create_app",
    "free_port",
    "main",
    "run",
    "run_ray",
]
