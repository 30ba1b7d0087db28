"""One request's generation on its model (:class:`Job`) and its server-sent events (:func:`sse`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

from fastapi import Request

from slmops.toolkit.endpoint.hosts import ModelHost
from slmops.toolkit.endpoint.metrics import Metrics
from slmops.toolkit.endpoint.options import DISCONNECT_POLL_S
from slmops.toolkit.endpoint.protocol import ApiError, runtime_failure
from slmops.toolkit.runtimes.foundry_requests import Usage


class Gone(Exception):
    """The client closed the connection before its answer was ready."""


END = object()


class Timeout:
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
        self.slot = host.slot_for(body)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        host, name = self.host, self.host.name
        host.waiting += 1
        self.metrics.waiting.labels(model=name).inc()
        try:
            async with self.slot:  # FIFO: asyncio's Lock and Semaphore wake their waiters in arrival order
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
            for item in self.host.stream(self.body, self.slot is self.host.batch_slots):
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
                    pending.append(Timeout())
                    break
        except Exception as exc:  # noqa: BLE001 (answered to the client as a JSON error)
            pending.append(exc)
        finally:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, [*pending, END])

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
            poll_s: How often the connection is checked, in seconds (the deadline ends the wait in any case).

        Raises:
            Gone: the client left (the job is dropped).
            ApiError: 504 when the request's deadline passed before its answer was ready (the job is dropped).
        """
        while True:
            # Without a connection to watch only the deadline ends the wait: no wake-up every poll_s per stream.
            left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            wait = min((t for t in (poll_s if request is not None else None, left) if t is not None), default=None)
            try:
                return await asyncio.wait_for(self.queue.get(), timeout=wait)
            except TimeoutError:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.drop()
                    raise self.timeout_error() from None
                if request is not None and await request.is_disconnected():
                    self.drop()
                    raise Gone from None

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


async def sse(job: Job, first: list, include_usage: bool, info: dict) -> AsyncIterator[str]:
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
                if item is END:
                    job.record()
                    info["usage"] = job.usage
                    yield "".join(events) + "data: [DONE]\n\n"
                    return
                if isinstance(item, Timeout):
                    error = job.timeout_error()
                    yield "".join(events) + f"data: {json.dumps(error.body())}\n\n"
                    return
                if isinstance(item, Exception):
                    yield "".join(events) + f"data: {json.dumps(runtime_failure(item).body())}\n\n"
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

