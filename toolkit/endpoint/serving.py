"""The chat completions service behind the routes: admission, the queue bound, and the answer's shape."""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from slmops.toolkit.endpoint.hosts import ModelHost, ModelState, runtime_body
from slmops.toolkit.endpoint.jobs import END, Gone, Job, Timeout, sse
from slmops.toolkit.endpoint.metrics import Metrics
from slmops.toolkit.endpoint.options import DISCONNECT_POLL_S, ServeOptions
from slmops.toolkit.endpoint.protocol import (
    ApiError,
    ChatRequest,
    completion,
    error_response,
    read_body,
    runtime_failure,
    validation_error,
)


class ServingChat:
    """``POST /v1/chat/completions`` for the served models (held in ``app.state.serving``).

    Args:
        hosts: The served models by name.
        metrics: Where requests are counted.
        options: Limits and timings.
    """

    def __init__(self, hosts: dict[str, ModelHost], metrics: Metrics, options: ServeOptions) -> None:
        self.hosts, self.metrics, self.options = hosts, metrics, options

    def known_host(self, name: str) -> ModelHost:
        """The served model ``name``, whatever its state.

        Raises:
            ApiError: 404 when it is not served here.
        """
        host = self.hosts.get(name)
        if host is None:
            raise ApiError(404, f"The model {name!r} is not served here; served: {sorted(self.hosts)}.",
                           param="model", code="model_not_found")
        return host

    def ready_host(self, name: str) -> ModelHost:
        """The served model ``name``, once loaded.

        Raises:
            ApiError: 404 when it is not served here, 503 while it loads or when it failed to.
        """
        host = self.known_host(name)
        if host.state is ModelState.LOADING:
            raise ApiError(503, f"The model {name!r} is loading; retry in a moment.", type="server_error",
                           code="model_loading")
        if host.state is ModelState.FAILED:
            raise ApiError(503, f"The model {name!r} failed to load: {host.error}", type="server_error",
                           code="model_failed")
        return host

    async def create(self, request: Request) -> Response | dict:
        """Answer one chat completion request: checked, queued (or refused past the bound), then generated."""
        arrived, arrived_at = time.perf_counter(), time.monotonic()
        raw = await read_body(request, self.options.max_body_bytes)
        try:
            parsed = ChatRequest.model_validate(raw)
        except ValidationError as exc:
            raise validation_error(exc) from exc
        info = request.scope.get("slmops", {})
        host = self.ready_host(parsed.model)
        info["model"] = host.name
        body = runtime_body(host, parsed)
        if host.waiting >= self.options.max_queue:
            error = ApiError(503, f"The model {host.name!r} has {host.waiting} requests waiting (the server's "
                                  f"--max-queue); retry later.", type="server_error", code="queue_full")
            return error_response(error, host.retry_after_s())
        timeout_s = self.options.request_timeout_s
        interval_s = self.options.stream_interval_s if parsed.stream else float("inf")
        job = Job(host, body, interval_s=interval_s, deadline=arrived_at + timeout_s if timeout_s else None,
                  metrics=self.metrics, arrived=arrived)
        try:
            items = await job.next_items(request, DISCONNECT_POLL_S)  # the role chunk, or why there is none
            while not parsed.stream and items[-1] is not END:
                items += await job.next_items(request, DISCONNECT_POLL_S)
        except Gone:
            return Response(status_code=499)  # nobody reads it: the client has left
        except BaseException:
            job.drop()  # whatever went wrong here, the model is not left generating for nobody
            raise
        return self.answer(parsed, job, items, info)

    @staticmethod
    def answer(parsed: ChatRequest, job: Job, items: list, info: dict) -> Response | dict:
        """The whole ``chat.completion`` (``items`` end the generation), or the event stream that ``items`` begin.

        Raises:
            ApiError: 500 when the runtime failed, 504 past the deadline (before any event went out).
        """
        if not parsed.stream:
            job.record()
            info["usage"] = job.usage
        for item in items:
            if isinstance(item, Exception):  # refused before anything was sent: a real error status
                raise runtime_failure(item)
            if isinstance(item, Timeout):
                raise job.timeout_error()
        if not parsed.stream:
            return completion([item for item in items if isinstance(item, str)], job.usage, parsed.model)
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        return StreamingResponse(sse(job, items, include_usage, info), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
