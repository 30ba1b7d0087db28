"""The FastAPI application: routes (a thin layer over :class:`~slmops.toolkit.endpoint.serving.ServingChat`),
error handlers, and the middleware that keeps every connection usable (:class:`Guard`)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from slmops.toolkit.endpoint.adapters import ServedAdapter, adapter_hosts
from slmops.toolkit.endpoint.hosts import ModelHost, ModelState, load_all
from slmops.toolkit.endpoint.metrics import Metrics
from slmops.toolkit.endpoint.options import ServeOptions
from slmops.toolkit.endpoint.protocol import ApiError, error_response
from slmops.toolkit.endpoint.serving import ServingChat

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """Each model's state, requests waiting and generating; 200 once every model is ready, 503 before."""
    models = {name: host.health() for name, host in request.app.state.hosts.items()}
    ok = all(model["state"] == ModelState.READY for model in models.values())
    return JSONResponse({"status": "ok" if ok else "loading", "models": models}, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus(request: Request):
    """The Prometheus exposition of :class:`~slmops.toolkit.endpoint.metrics.Metrics`."""
    text, content_type = request.app.state.metrics.render()
    return Response(text, media_type=content_type)


@router.get("/v1/models")
async def list_models(request: Request):
    """OpenAI's model list."""
    return {"object": "list", "data": [host.describe() for host in request.app.state.hosts.values()]}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request):
    """One served model (404 for any other)."""
    return request.app.state.serving.known_host(name).describe()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    """OpenAI's chat completions, plain or streamed."""
    return await request.app.state.serving.create(request)


async def _api_error(_request, exc: ApiError):
    return error_response(exc)


async def _http_error(_request, exc: HTTPException):
    return JSONResponse(ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404
                                 else None).body(), status_code=exc.status_code)


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
                    await error_response(error)(scope, receive, watched_send)
                    return
            await self.app(scope, receive, watched_send)
        except Exception as exc:  # noqa: BLE001 (answered as JSON; re-raising would drop the connection)
            print(f"Internal error on {scope['method']} {scope['path']}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            traceback.print_exc(file=sys.stderr)
            if not sent:
                await error_response(ApiError(500, f"Internal error: {type(exc).__name__}: {exc}",
                                               type="server_error"))(scope, receive, watched_send)
        finally:
            self.finish(scope, info, time.perf_counter() - start)

    def finish(self, scope, info: dict, seconds: float) -> None:
        """Count the request and write its access-log line."""
        path = scope["path"] if scope["path"] in ROUTES else "other"
        self.metrics.requests.labels(path=path, model=info["model"], status=str(info["status"] or 0)).inc()
        if self.log_requests:
            usage = info["usage"]
            tokens = f"{usage.prompt_tokens}+{usage.completion_tokens}" if usage is not None else "-"
            print(f'{scope["method"]} {scope["path"]} model={info["model"] or "-"} status={info["status"] or "-"} '
                  f"tokens={tokens} ms={seconds * 1000:.0f}", file=sys.stderr, flush=True)


ROUTES = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions"})


def create_app(names: Sequence[str], *, cache: str | Path | None = None, api_key: str | None = None,
               options: ServeOptions | None = None, log_requests: bool = False,
               adapters: Sequence[ServedAdapter] = (), **limits):
    """The ASGI application serving ``names`` (loaded in the background when it starts).

    Args:
        names: Registered model names.
        cache: Foundry cache (see :func:`slmops.toolkit.core.settings.cache_dir`).
        api_key: When set, every request but ``/health`` and ``/metrics`` needs ``Authorization: Bearer <api_key>``.
        options: Limits and timings (:class:`~slmops.toolkit.endpoint.options.ServeOptions`).
        log_requests: Write one access-log line per request to stderr.
        adapters: Fine-tunes served by name over the one model of ``names`` (:mod:`.adapters`).
        **limits: Single :class:`~slmops.toolkit.endpoint.options.ServeOptions` fields, instead of ``options``.
    """
    options = options or ServeOptions(**limits)
    metrics = Metrics([*names, *(a.name for a in adapters)])
    hosts = {name: ModelHost(name, cache, options.batch_size, options.policy, on_step=metrics.batch_size.labels(
        model=name).observe, prefix_cache_mib=options.prefix_cache_mib) for name in names}
    for name, host in hosts.items():
        metrics.engines.add(name, lambda host=host: host.batched.engine if host.batched is not None else None)
    if adapters:
        hosts |= adapter_hosts(adapters, hosts[names[0]])

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        loader = threading.Thread(target=load_all, args=(hosts,), name="serve-loader", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        for host in hosts.values():
            await asyncio.to_thread(host.close)
        print("Stopped: in-flight requests finished, models unloaded.", file=sys.stderr, flush=True)

    app = FastAPI(title="slmops OpenAI-compatible endpoint", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.hosts, app.state.metrics = hosts, metrics
    app.state.serving = ServingChat(hosts, metrics, options)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(router)
    # Inside Starlette's outermost middleware, so that no exception reaches it (see Guard).
    app.add_middleware(Guard, api_key=api_key, metrics=metrics, log_requests=log_requests)
    return app
