"""Served models: each loaded in the background, then answering through its own thread (:class:`ModelHost`)."""

from __future__ import annotations

import asyncio
import math
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path

from slmops.toolkit.core.errors import InputError, PromptTooLongError
from slmops.toolkit.endpoint.batched import BatchedChat
from slmops.toolkit.endpoint.protocol import ApiError, ChatRequest, plain_messages
from slmops.toolkit.runtimes.batching import Policy
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_requests import Usage
from slmops.toolkit.runtimes.prefix_cache import PREFIX_CACHE_MIB


class ModelState(StrEnum):
    """Where a served model is."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelHost:
    """One served model: loaded in the background, then answering up to ``batch_size`` requests together.

    Requests the batch takes (:meth:`BatchedChat.accepts`) hold one of ``batch_size`` slots;
    constrained decoding and tool calls run on Foundry Local one at a time, in a slot of their own.
    Both queue in arrival order on the event loop, where a request that is dropped leaves at once.

    Args:
        name: The registered model.
        cache: Foundry cache.
        batch_size: Most requests decoded together (0: none batched, each on Foundry Local in turn).
        policy: When waiting requests join the batch.
        on_step: Called with the batch's size at every decode step.
        prefix_cache_mib: Memory the batch engine keeps recent prompts' keys and values in (0: none).
    """

    def __init__(self, name: str, cache: str | Path | None, batch_size: int = 0,
                 policy: Policy = Policy.PREFILL_FIRST, on_step: Callable[[int], None] | None = None,
                 prefix_cache_mib: int = PREFIX_CACHE_MIB) -> None:
        self.name, self.cache, self.batch_size, self.policy, self.on_step = name, cache, batch_size, policy, on_step
        self.prefix_cache_mib = prefix_cache_mib
        self.state = ModelState.LOADING
        self.error = ""
        self.model: LoadedModel | None = None
        self.batched: BatchedChat | None = None
        self.created = int(time.time())
        self.executor = ThreadPoolExecutor(max_workers=batch_size + 1, thread_name_prefix=f"serve-{name}")
        self.slot = asyncio.Lock()  # the one request on Foundry Local
        self.batch_slots = asyncio.Semaphore(max(1, batch_size))
        self.waiting = 0  # requests queued for a slot
        self.in_flight = 0  # requests generating
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
            if self.batch_size:
                self.batched = BatchedChat(self.model, self.batch_size, self.policy, self.prefix_cache_mib)
                self.batched.engine.on_step = self.on_step
            self.state = ModelState.READY
        except Exception as exc:  # noqa: BLE001 (the failure is served to clients as a 503)
            self.error, self.state = f"{type(exc).__name__}: {exc}", ModelState.FAILED

    def close(self) -> None:
        """Let queued requests finish, then unload."""
        self.executor.shutdown(wait=True)
        if self.batched is not None:
            self.batched.close()
        if self.model is not None:
            self.model.close()

    def slot_for(self, body: dict) -> asyncio.Lock | asyncio.Semaphore:
        """Where ``body`` waits: a batch slot, or Foundry Local's one."""
        return self.batch_slots if self.batched is not None and self.batched.accepts(body) else self.slot

    def stream(self, body: dict, batched: bool) -> Iterator[str | Usage]:
        """The runtime's chunks of ``body``'s answer, then its usage (see :meth:`LoadedModel.native_stream`)."""
        return self.batched.stream(body) if batched else self.model.native_stream(body)

    def describe(self) -> dict:
        """The model's ``/v1/models`` entry."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "slmops",
                "status": self.state.value}


def runtime_body(host: ModelHost, request: ChatRequest) -> dict:
    """Check a parsed request against the model (context, options) and build the runtime's request."""
    if request.logprobs:
        raise ApiError(400, "logprobs are not supported by this endpoint.", param="logprobs")
    for param in ("frequency_penalty", "presence_penalty", "logit_bias"):
        if getattr(request, param):  # 0, 0.0, {} and null are OpenAI's defaults: nothing asked
            raise ApiError(400, f"{param} is not supported by this endpoint (Foundry Local's runtime has no such "
                                "option); leave it out. A repetition penalty is set when the model is registered "
                                "(slmops register --repetition-penalty).", param=param)
    messages = plain_messages(request)
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



def load_all(hosts: dict[str, ModelHost]) -> None:
    """Load every model, one after another (the runtime's manager is shared), each outcome on stderr."""
    for host in hosts.values():
        start = time.perf_counter()
        host.load()
        outcome = "ready" if host.state is ModelState.READY else f"failed to load: {host.error}"
        print(f"{host.name}: {outcome} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
