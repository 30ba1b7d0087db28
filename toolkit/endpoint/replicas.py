"""``slmops serve --ray``: the same endpoint as Ray Serve deployments, a replica set per model, across a Ray cluster.

Each model is a deployment of its own (``--replicas`` copies, each taking ``--replica-cpus`` of a
node's CPUs); every replica runs the endpoint's application (:func:`~slmops.toolkit.endpoint.app.create_app`)
for that model alone, loaded before the replica counts as running, so batching, back-pressure,
cancellation, errors and ``/metrics`` are the single-machine endpoint's, per replica. An ingress
deployment (what clients call, on Ray Serve's HTTP proxy on the head node) reads each request's model and hands the
whole HTTP request to one replica of that model through a Ray Serve handle (Ray Serve picks the
less busy of two), streaming the answer back as it comes; a client that leaves cancels the call,
and the replica's application sees the disconnect as it would under uvicorn.

Clients use the same OpenAI API: ``GET /v1/models`` lists every model, ``POST /v1/chat/completions``
goes to the model named in the body, ``GET /health`` gathers each model's (from one replica each);
``GET /metrics?model=NAME`` is one replica's Prometheus text (the first model's without ``model``).
Every answer from a replica carries :data:`REPLICA_HEADER` (the replica's id) and
:data:`NODE_HEADER` (its Ray node's id).
"""

# No postponed annotations in this module: FastAPI reads the routes' signatures (their ``Annotated`` dependency
# included) when it builds the application.
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint.options import DEFAULT_HOST, DEFAULT_PORT, ServeOptions
from slmops.toolkit.endpoint.protocol import ApiError, error_response

#: Response header naming the replica that answered.
REPLICA_HEADER = "x-slmops-replica"
#: Response header naming the Ray node of that replica.
NODE_HEADER = "x-slmops-node"
#: The Ray Serve application's name.
APP_NAME = "slmops"
#: CPUs each replica takes from its node by default (ONNX Runtime's threads are the model's own setting).
DEFAULT_REPLICA_CPUS = 1.0


@dataclass(frozen=True)
class Forwarded:
    """One HTTP request as the ingress hands it to a replica (picklable).

    Attributes:
        method: ``GET`` or ``POST``.
        path: The request path.
        query: The raw query string.
        headers: The request headers as ``(name, value)`` byte pairs.
        body: The whole request body.
    """

    method: str
    path: str
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


async def call_asgi(app, request: Forwarded, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> AsyncIterator[dict]:
    """Run ``request`` through the ASGI application ``app``; yield its ``http.response.*`` messages as they come.

    Closing the iterator early tells the application its client left (``http.disconnect``) and waits
    for it to finish. ``extra_headers`` are added to the response's start.
    """
    messages: asyncio.Queue[dict | None] = asyncio.Queue()
    left, delivered = asyncio.Event(), False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
        await messages.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
             "scheme": "http", "path": request.path, "raw_path": request.path.encode(), "query_string": request.query,
             "root_path": "", "headers": list(request.headers), "client": None, "server": None}

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    try:
        while (message := await messages.get()) is not None:
            yield message
    finally:
        left.set()
        await task


async def _forwarded(request) -> Forwarded:
    """A Starlette request's parts and whole body."""
    return Forwarded(request.method, request.url.path, request.url.query.encode(), tuple(request.headers.raw),
                     await request.body())


class ModelReplica:
    """The endpoint's application for one model, loaded in the constructor (Ray waits for it).

    A Ray Serve deployment once :func:`_deployments` wraps it (``--replicas`` copies of ``--replica-cpus`` each).
    """

    def __init__(self, name: str, cache: str | None, api_key: str | None, settings: dict, log_requests: bool) -> None:
        import ray
        from ray import serve

        from slmops.toolkit.endpoint.app import create_app
        from slmops.toolkit.endpoint.hosts import ModelState, load_all

        self.app = create_app([name], cache=cache, api_key=api_key, options=ServeOptions(**settings),
                              log_requests=log_requests)
        self.hosts = self.app.state.hosts  # loaded here, not by the application's lifespan
        load_all(self.hosts)
        if any(host.state is not ModelState.READY for host in self.hosts.values()):
            raise RuntimeError(f"{name} did not load: {self.hosts[name].error}")
        context = serve.get_replica_context()
        self.headers = ((REPLICA_HEADER.encode(), context.replica_id.unique_id.encode()),
                        (NODE_HEADER.encode(), ray.get_runtime_context().get_node_id().encode()))

    async def handle(self, request: Forwarded) -> AsyncIterator[dict]:
        """``request``'s response messages (streamed through the handle)."""
        async for message in call_asgi(self.app, request, self.headers):
            yield message

    def __del__(self) -> None:
        for host in getattr(self, "hosts", {}).values():
            host.close()


class Ingress:
    """Routes each request to a replica of its model: the ingress deployment, its routes the functions of :data:`_ROUTES`.

    Args:
        models: Each model's name and the Ray Serve handle of its replicas.
    """

    def __init__(self, **models) -> None:
        self.models = models  # name -> DeploymentHandle

    async def forward(self, name: str, request: Request) -> Response:
        """``request`` answered by a replica of ``name``, streamed back as it comes (a client that leaves cancels it)."""
        forwarded = await _forwarded(request)
        call = self.models[name].options(stream=True, method_name="handle").remote(forwarded)
        try:
            start = await call.__anext__()
        except BaseException:
            call.cancel()
            raise
        headers = {k.decode(): v.decode() for k, v in start["headers"] if k.lower() != b"content-length"}

        async def body() -> AsyncIterator[bytes]:
            try:
                async for message in call:
                    if message.get("body"):
                        yield message["body"]
            finally:
                call.cancel()

        return StreamingResponse(body(), status_code=start["status"], headers=headers)

    async def gather(self, path: str, request: Request) -> list[tuple[int, dict]]:
        """Each model's answer to ``GET path`` (one replica each): status and JSON body."""
        answers = []
        for name in self.models:
            forwarded = Forwarded("GET", path, b"", tuple(request.headers.raw), b"")
            chunks, status = [], 500
            async for message in self.models[name].options(stream=True, method_name="handle").remote(forwarded):
                status = message.get("status", status)
                chunks.append(message.get("body", b""))
            answers.append((status, json.loads(b"".join(chunks) or b"{}")))
        return answers


def _ingress() -> Ingress:
    """The ingress replica serving the request (a FastAPI dependency of the routes)."""
    from ray import serve

    return serve.get_replica_context().servable_object


#: A route's parameter that FastAPI fills with the ingress replica.
TheIngress = Annotated[Ingress, Depends(_ingress)]

# The routes are functions of this module, not methods: Ray Serve pickles the application, and these are found by
# name in the replica, with their signatures (a method's ``self`` made a dependency in the driver was lost there).
async def health(request: Request, ingress: TheIngress):
    """Each model's ``/health`` (one replica each); 200 once all are ready."""
    answers = await ingress.gather("/health", request)
    models = {name: entry for _, answer in answers for name, entry in answer.get("models", {}).items()}
    ok = all(status == 200 for status, _ in answers)
    return JSONResponse({"status": "ok" if ok else "loading", "models": models}, status_code=200 if ok else 503)


async def list_models(request: Request, ingress: TheIngress):
    """OpenAI's model list: every model's."""
    answers = await ingress.gather("/v1/models", request)
    if any(status != 200 for status, _ in answers):
        return JSONResponse(next(a for s, a in answers if s != 200), status_code=next(s for s, _ in answers if s != 200))
    return {"object": "list", "data": [model for _, answer in answers for model in answer["data"]]}


async def get_model(name: str, request: Request, ingress: TheIngress):
    """One model (404 for any other)."""
    return await ingress.forward(name if name in ingress.models else next(iter(ingress.models)), request)


async def metrics(request: Request, ingress: TheIngress, model: str | None = None):
    """One replica's Prometheus text, of ``model`` (default: the first)."""
    if model is not None and model not in ingress.models:
        return error_response(ApiError(404, f"No model {model!r} is served here.", code="model_not_found"))
    return await ingress.forward(model or next(iter(ingress.models)), request)


async def chat_completions(request: Request, ingress: TheIngress):
    """To a replica of the body's model (a body that names none goes to the first, which says what is wrong)."""
    try:
        name = json.loads(await request.body()).get("model")
    except (ValueError, AttributeError):
        name = None
    if isinstance(name, str) and name not in ingress.models:
        return error_response(ApiError(404, f"The model {name!r} does not exist here: this endpoint serves "
                                       f"{', '.join(ingress.models)}.", param="model", code="model_not_found"))
    return await ingress.forward(name if isinstance(name, str) else next(iter(ingress.models)), request)


#: The ingress's routes: method, path and function.
_ROUTES = (("GET", "/health", health), ("GET", "/v1/models", list_models), ("GET", "/v1/models/{name}", get_model),
           ("GET", "/metrics", metrics), ("POST", "/v1/chat/completions", chat_completions))


def _deployments(names: Sequence[str], *, replicas: int, replica_cpus: float, cache: str | None,
                 api_key: str | None, options: ServeOptions, log_requests: bool):
    """The Ray Serve application: the :class:`Ingress` deployment bound to a :class:`ModelReplica` set per model."""
    from ray import serve

    api = FastAPI(title="slmops OpenAI-compatible endpoint on Ray Serve", docs_url=None, redoc_url=None)
    for method, path, endpoint in _ROUTES:
        api.add_api_route(path, endpoint, methods=[method])
    ingress = serve.deployment(serve.ingress(api)(Ingress)).options(
        num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    replica = serve.deployment(ModelReplica).options(
        num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=options.batch_size + options.max_queue + 8)
    settings = asdict(options)
    return ingress.bind(**{name: replica.options(name=f"model-{name}").bind(name, cache, api_key, settings,
                                                                           log_requests) for name in names})


def deploy(names: Sequence[str], *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, replicas: int = 1,
           replica_cpus: float = DEFAULT_REPLICA_CPUS, cache: str | Path | None = None, api_key: str | None = None,
           options: ServeOptions | None = None, log_requests: bool = False) -> str:
    """Start Ray Serve on the connected Ray cluster with ``names``; return the OpenAI base URL once every replica loaded.

    The caller has joined the cluster (:func:`slmops.toolkit.orchestration.cluster.connect`) and has
    checked the names (:func:`~slmops.toolkit.endpoint.cli.check_options`).

    Raises:
        InputError: Ray Serve is not installed, or an option is out of range.
    """
    if type(replicas) is not int or not 1 <= replicas <= 64:
        raise InputError(f"--replicas {replicas!r} is out of range: use a whole number from 1 to 64.")
    if not 0 <= replica_cpus <= 64:
        raise InputError(f"--replica-cpus {replica_cpus!r} is out of range: use 0 to 64.")
    try:
        from ray import serve
    except ImportError as exc:
        raise InputError("--ray needs Ray Serve, which is not installed: pip install 'slmops-toolkit[cluster]'.") \
            from exc
    options = options or ServeOptions()
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    cache_dir = str(cache) if cache is not None else None
    serve.run(_deployments(names, replicas=replicas, replica_cpus=replica_cpus, cache=cache_dir, api_key=api_key,
                           options=options, log_requests=log_requests), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}/v1"


def serve_replicas(names: Sequence[str], *, address: str | None, host: str, port: int, replicas: int, replica_cpus: float,
        cache: str | Path | None, api_key: str | None, options: ServeOptions, log_requests: bool = False) -> None:
    """Serve ``names`` on Ray Serve until Ctrl-C or SIGTERM (``slmops serve --ray``)."""
    import signal
    import threading

    from slmops.toolkit.orchestration import cluster

    cluster.connect(address)
    url = deploy(names, host=host, port=port, replicas=replicas, replica_cpus=replica_cpus, cache=cache,
                 api_key=api_key, options=options, log_requests=log_requests)
    print(f"Serving {', '.join(names)} on Ray Serve at {url} ({replicas} replica{'s' if replicas != 1 else ''} "
          "per model). Ctrl-C or SIGTERM stops it.", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(1):
            pass
    from ray import serve

    serve.shutdown()
