"""Starting the endpoint: option checks, :func:`run` (``slmops serve``), a child-process endpoint for
programs and tests (:func:`background`), and the child's command line (``python -m slmops.toolkit.endpoint``)."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import settings, workers
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.endpoint.adapters import check_adapters
from slmops.toolkit.endpoint.app import create_app
from slmops.toolkit.endpoint.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_HOST,
    DEFAULT_MAX_QUEUE,
    DEFAULT_POLICY,
    DEFAULT_PORT,
    DEFAULT_PREFIX_CACHE_MIB,
    DEFAULT_REQUEST_TIMEOUT_S,
    MAX_PREFIX_CACHE_MIB,
    SHUTDOWN_GRACE_S,
    STREAM_INTERVAL_S,
    ServeOptions,
)
from slmops.toolkit.endpoint.replicas import DEFAULT_REPLICA_CPUS, serve_replicas
from slmops.toolkit.runtimes.batching import Policy
from slmops.toolkit.runtimes.foundry_session import find_model
from slmops.toolkit.runtimes.foundry_web import probe_web_service, serve_natively


def is_loopback(host: str) -> bool:
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
    if not is_loopback(host) and api_key is None:
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
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, log_requests: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE, policy: str = DEFAULT_POLICY, adapters: Sequence[str] = (),
        prefix_cache_mib: int = DEFAULT_PREFIX_CACHE_MIB) -> None:
    """Serve ``names`` until SIGTERM or Ctrl-C (both graceful); see :mod:`slmops.toolkit.endpoint`.

    ``adapters`` (``NAME=FILE`` each, ``--adapter``) serves fine-tunes by name over the one model of ``names``
    (:mod:`slmops.toolkit.endpoint.adapters`).

    Raises:
        InputError, ModelNotFoundError: from :func:`check_options`, before anything starts.
        InputError: the port is taken, an option is out of range, or an adapter cannot be served
            (:func:`~slmops.toolkit.endpoint.adapters.check_adapters`).
    """
    import uvicorn

    options = _checked(names, host, port, api_key, cache, stream_interval_s=stream_interval_s, max_queue=max_queue,
                       request_timeout_s=request_timeout_s, batch_size=batch_size, policy=policy,
                       prefix_cache_mib=prefix_cache_mib)
    served = check_adapters(names, adapters, cache, batch_size)
    if api_key is None and not served and probe_web_service(names[0], cache).serves:
        serve_natively(list(names), host, port, cache)  # the runtime's own service (it has no API keys)
        return
    app = create_app(names, cache=cache, api_key=api_key, options=options, log_requests=log_requests, adapters=served)
    names = [*names, *(f"{a.name} (adapter)" for a in served)]
    print(f"Serving {', '.join(names)} at http://{host}:{port}/v1 (OpenAI-compatible, "
          f"{'bearer key required' if api_key else 'no key'}); loading. Ctrl-C or SIGTERM stops it once in-flight "
          "requests finish.", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    uvicorn.Server(config).run()


def _checked(names: Sequence[str], host: str, port: int, api_key: str | None, cache: str | Path | None, *,
             stream_interval_s: float, max_queue: int, request_timeout_s: float | None, batch_size: int,
             policy: str, prefix_cache_mib: int = DEFAULT_PREFIX_CACHE_MIB) -> ServeOptions:
    """:func:`check_options` and the limits' ranges, and a free port; the :class:`ServeOptions`."""
    check_options(names, host, port, api_key, cache)
    if not 0 <= stream_interval_s <= 10:
        raise InputError(f"--stream-interval-ms {stream_interval_s * 1000:g} is out of range: use 0 to 10000.")
    if type(max_queue) is not int or max_queue < 0:
        raise InputError(f"--max-queue {max_queue!r} is not a count: use a whole number from 0 (no waiting).")
    if type(batch_size) is not int or not 0 <= batch_size <= 256:
        raise InputError(f"--batch-size {batch_size!r} is out of range: use a whole number from 0 (no batching) "
                         "to 256.")
    if policy not in tuple(Policy):
        raise InputError(f"--schedule {policy!r} is not a policy: use one of {', '.join(Policy)}.")
    if type(prefix_cache_mib) is not int or not 0 <= prefix_cache_mib <= MAX_PREFIX_CACHE_MIB:
        raise InputError(f"--prefix-cache-mib {prefix_cache_mib!r} is out of range: use a whole number of MiB from 0 "
                         f"(no prefix caching) to {MAX_PREFIX_CACHE_MIB}.")
    if request_timeout_s is not None and not request_timeout_s > 0:
        raise InputError(f"--request-timeout {request_timeout_s!r} is out of range: use seconds above 0 "
                         "(or leave it out for the default).")
    with socket.socket() as probe:  # a taken port is the user's to change, not a traceback
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port.") from exc
    return ServeOptions(stream_interval_s=stream_interval_s, max_queue=max_queue, request_timeout_s=request_timeout_s,
                        batch_size=batch_size, policy=Policy(policy), prefix_cache_mib=prefix_cache_mib)


def run_ray(names: Sequence[str], *, address: str | None = None, replicas: int = 1,
            replica_cpus: float = DEFAULT_REPLICA_CPUS, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
            api_key: str | None = None, cache: str | Path | None = None, stream_interval_s: float = STREAM_INTERVAL_S,
            max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
            batch_size: int = DEFAULT_BATCH_SIZE, policy: str = DEFAULT_POLICY, log_requests: bool = False,
            prefix_cache_mib: int = DEFAULT_PREFIX_CACHE_MIB) -> None:
    """``slmops serve --ray``: serve ``names`` as Ray Serve replicas on the Ray cluster at ``address`` (None: a
    local Ray) until Ctrl-C or SIGTERM; see :mod:`slmops.toolkit.endpoint.replicas`.

    Raises:
        InputError, ModelNotFoundError: as :func:`run`, before anything starts; Ray Serve missing or no
            cluster at ``address``.
    """
    options = _checked(names, host, port, api_key, cache, stream_interval_s=stream_interval_s, max_queue=max_queue,
                       request_timeout_s=request_timeout_s, batch_size=batch_size, policy=policy,
                       prefix_cache_mib=prefix_cache_mib)
    serve_replicas(names, address=address, host=host, port=port, replicas=replicas, replica_cpus=replica_cpus,
                 cache=settings.cache_dir(cache), api_key=api_key, options=options, log_requests=log_requests)


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


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def background(names: Sequence[str], *, port: int | None = None, cache: str | Path | None = None,
               api_key: str | None = None, log_path: Path | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
               request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S, log_requests: bool = False,
               batch_size: int = DEFAULT_BATCH_SIZE, policy: str = DEFAULT_POLICY, adapters: Sequence[str] = (),
               prefix_cache_mib: int = DEFAULT_PREFIX_CACHE_MIB):
    """Start the endpoint for ``names`` in a child process, yield an :class:`Endpoint` once every model is loaded.

    ``max_queue``, ``request_timeout_s``, ``batch_size``, ``policy`` and ``prefix_cache_mib`` are :class:`ServeOptions`
    fields,
    ``log_requests`` :func:`create_app`'s (the log goes to ``log_path``), ``adapters`` :func:`run`'s.

    Example:
        >>> with background(["smollm2-int4"]) as endpoint:
        ...     endpoint.client().chat.completions.create(model="smollm2-int4", messages=[...])
    """
    check_options(names, DEFAULT_HOST, port or 0, api_key, cache)
    check_adapters(names, adapters, cache, batch_size)
    port = port or free_port()
    root = f"http://{DEFAULT_HOST}:{port}"
    args = [*names, "--host", DEFAULT_HOST, "--port", str(port), "--cache-dir", str(settings.cache_dir(cache))]
    if api_key:
        args += ["--api-key", api_key]
    args += ["--max-queue", str(max_queue), "--request-timeout", str(request_timeout_s or 0),
             "--batch-size", str(batch_size), "--schedule", str(policy), "--prefix-cache-mib", str(prefix_cache_mib)]
    if log_requests:
        args.append("--log-requests")
    for adapter in adapters:
        args.append(f"--adapter={adapter}")
    log = log_path or settings.cache_dir(cache) / ".logs" / f"serve-{port}.log"
    service = workers.start_service(workers.python_module("slmops.toolkit.endpoint", *args), log_path=log,
                                    name=f"endpoint for {', '.join(names)}", ready=lambda: healthy(root))
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
    [--request-timeout S] [--log-requests] [--adapter NAME=FILE]...`` (the child)."""
    parser = argparse.ArgumentParser(prog="python -m slmops.toolkit.endpoint")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--api-key")
    parser.add_argument("--cache-dir")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE)
    parser.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    parser.add_argument("--log-requests", action="store_true")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--schedule", default=DEFAULT_POLICY)
    parser.add_argument("--prefix-cache-mib", type=int, default=DEFAULT_PREFIX_CACHE_MIB)
    parser.add_argument("--adapter", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        run(args.names, host=args.host, port=args.port, api_key=args.api_key, cache=args.cache_dir,
            max_queue=args.max_queue, request_timeout_s=args.request_timeout or None, log_requests=args.log_requests,
            batch_size=args.batch_size, policy=args.schedule, adapters=args.adapter,
            prefix_cache_mib=args.prefix_cache_mib)
    except SlmopsError as exc:
        sys.exit(str(exc))


