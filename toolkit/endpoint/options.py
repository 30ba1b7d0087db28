"""The endpoint's limits and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from slmops.toolkit.runtimes.batching import Policy
from slmops.toolkit.runtimes.prefix_cache import PREFIX_CACHE_MIB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_BODY_BYTES = 4 * 1024 * 1024  # a long chat history is tens of KB; 4 MiB leaves room and stops floods
SHUTDOWN_GRACE_S = 60  # how long in-flight requests may take to finish after SIGTERM
# Streamed pieces go out together at most this often (each at once when tokens come slower; the first at
# once). Waking the server for every token at hundreds a second takes CPU from decode where ONNX Runtime's
# threads use every core; 50 ms (20 updates a second) keeps decode at in-process speed (docs: benchmarks page).
STREAM_INTERVAL_S = 0.05
# Requests that may wait for a model behind those it generates. The wait grows with the queue times a whole
# generation; past a few dozen, a request would wait minutes, longer than clients usually wait (the openai
# client gives up at 600 s), so it is told at once to come back instead.
DEFAULT_MAX_QUEUE = 32
# The openai client's own default timeout: a request older than this has no default client waiting for it.
DEFAULT_REQUEST_TIMEOUT_S = 600.0
# How often a request that is waiting or generating checks that its client is still there (and its deadline):
# a client that leaves frees its model within this and one decode step.
DISCONNECT_POLL_S = 0.02
# Requests each model decodes together (continuous batching); the benchmarks page has the measurement.
DEFAULT_BATCH_SIZE = 16
# When waiting requests join the batch; measured against decode-first on the benchmarks page.
DEFAULT_POLICY = Policy.PREFILL_FIRST
# Memory each model's batch engine keeps recent prompts' keys and values in (prefix caching), in MiB.
DEFAULT_PREFIX_CACHE_MIB = PREFIX_CACHE_MIB
#: The largest --prefix-cache-mib accepted (64 GiB).
MAX_PREFIX_CACHE_MIB = 65536


@dataclass(frozen=True)
class ServeOptions:
    """How the endpoint admits and answers requests (see :func:`slmops.toolkit.endpoint.app.create_app`).

    Attributes:
        max_body_bytes: Largest request body accepted.
        stream_interval_s: Streamed pieces go out together at most this often (0: every token at once).
        max_queue: Requests that may wait for each model behind those it generates; more get a 503
            with ``Retry-After``.
        request_timeout_s: Seconds a request may take from its arrival, queue included (None: no
            limit); past it the generation stops and the client gets a 504 (an error event when
            streaming had begun).
        batch_size: Requests each model decodes together (0: one at a time on Foundry Local).
        policy: When waiting requests join the batch.
        prefix_cache_mib: Memory each model's batch engine keeps recent prompts' keys and values in, in MiB
            (0: no prefix caching; see :mod:`slmops.toolkit.runtimes.prefix_cache`).
    """

    max_body_bytes: int = MAX_BODY_BYTES
    stream_interval_s: float = STREAM_INTERVAL_S
    max_queue: int = DEFAULT_MAX_QUEUE
    request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S
    batch_size: int = DEFAULT_BATCH_SIZE
    policy: Policy = DEFAULT_POLICY
    prefix_cache_mib: int = DEFAULT_PREFIX_CACHE_MIB
