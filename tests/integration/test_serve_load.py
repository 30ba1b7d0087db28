"""``slmops serve`` under load: errors that keep the connection, a bounded queue, timeouts, clients that leave, metrics.

The server runs over the real Foundry Local runtime on a tiny random model with a long context,
registered again to generate exactly ``max_tokens`` (:func:`foundry.fixed_length_registration`),
so a long generation takes seconds and a short one milliseconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from slmops.toolkit.core.errors import FoundryRequestError
from slmops.toolkit.endpoint.app import create_app
from slmops.toolkit.endpoint.cli import Endpoint, background, free_port
from slmops.toolkit.endpoint.hosts import ModelState
from slmops.toolkit.endpoint.options import DEFAULT_HOST
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.stages import register

KEY = "load-key"
ASK = [{"role": "user", "content": "Tell me about the sea."}]
LONG = 4000  # tokens: seconds of generation on this model; a short answer is milliseconds


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory):
    """The registered name of a tiny model with an 8,192-token context that always generates ``max_tokens``."""
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec
    from tests.models import make_tiny_model

    source = make_tiny_model(tmp_path_factory.mktemp("long") / "qwen2", context=8192)
    built = convert(ConvertSpec(source, tmp_path_factory.mktemp("long-int4") / "int4", Precision.INT4),
                    progress=False).output_dir
    register.register(built, "tiny-long")
    with foundry.fixed_length_registration("tiny-long") as name:
        yield name


@pytest.fixture(scope="module")
def busy(long_model: str, tmp_path_factory: pytest.TempPathFactory):
    """The endpoint with a key, a batch of one (decoded by the batching engine), a queue of one and an access log."""
    log = tmp_path_factory.mktemp("busy") / "serve.log"
    with background([long_model], api_key=KEY, max_queue=1, log_requests=True, log_path=log,
                          batch_size=1) as running:
        yield running


def _chat(model: str, max_tokens: int = 2, **extra) -> dict:
    return {"model": model, "messages": ASK, "max_tokens": max_tokens, "temperature": 0, **extra}


def _client(endpoint: Endpoint, **options) -> httpx.Client:
    return httpx.Client(base_url=endpoint.url, headers={"Authorization": f"Bearer {endpoint.api_key}"},
                        timeout=60, **options)


def _peer(response: httpx.Response) -> tuple:
    """The client side's address of the connection a response came on (``"closed"``: the server closed it)."""
    try:
        return response.extensions["network_stream"].get_extra_info("client_addr")
    except OSError:  # httpx closed its socket, as the server said it would close the connection
        return "closed"


def _wait_for(condition, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _health(endpoint: Endpoint, model: str) -> dict:
    return httpx.get(endpoint.url.removesuffix("/v1") + "/health").json()["models"][model]


def test_after_every_error_the_same_connection_serves_the_next_request(busy: Endpoint, long_model: str) -> None:
    """A 500 used to be followed by uvicorn closing the connection: the next request was reset, 8 of 20 times."""
    kinds = {
        "400 invalid JSON": lambda c: c.post("/chat/completions", content=b"{not json"),
        "400 tool result without its call": lambda c: c.post("/chat/completions", json={
            "model": long_model, "messages": [{"role": "tool", "tool_call_id": "x", "content": "42"}]}),
        "401 wrong key": lambda c: c.post("/chat/completions", json=_chat(long_model),
                                          headers={"Authorization": "Bearer wrong"}),
        "404 unknown model": lambda c: c.post("/chat/completions", json=_chat("nope")),
        "404 unknown route": lambda c: c.get("/embeddings"),
        "405 wrong method": lambda c: c.get("/chat/completions"),
        "413 body too large (unread)": lambda c: c.post("/chat/completions", content=b"x" * (5 * 1024 * 1024)),
    }
    for kind, bad in kinds.items():
        with _client(busy) as client:
            peers, served = set(), 0
            for _ in range(20):
                error = bad(client)
                assert str(error.status_code) == kind[:3], (kind, error.text)
                assert error.json()["error"]["message"], kind
                peers.add(_peer(error))
                after = client.post("/chat/completions", json=_chat(long_model))
                served += after.status_code == 200
                peers.add(_peer(after))
            print(f"{kind}: next request served {served} of 20, on {len(peers)} connection(s)")
            assert served == 20 and len(peers) == 1, kind


@pytest.fixture
def inproc(long_model: str):
    """The endpoint's application in this process under a real uvicorn (so the runtime can be made to fail)."""
    app = create_app([long_model])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=DEFAULT_HOST, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started and app.state.hosts[long_model].state is ModelState.READY, 60)
        yield f"http://{DEFAULT_HOST}:{port}/v1", app.state.hosts[long_model]
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def test_a_500_keeps_the_connection_too(inproc, long_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url, host = inproc

    def fails(*_args, **_kwargs):
        raise FoundryRequestError("a failure inside the runtime")

    def escapes(*_args, **_kwargs):
        raise RuntimeError("a bug in the endpoint")

    runtime = [(host.model, "native_stream"), (host.model, "native_complete"), (host.batched, "stream")]
    for kind, targets, replacement in (("runtime failure", runtime, fails),
                                       ("exception escaping the route", [(host.model, "check")], escapes)):
        with httpx.Client(base_url=url, timeout=60) as client:
            peers, served = set(), 0
            for _ in range(20):
                for stream in (False, True):  # a streamed request that fails before its first token: a 500 too
                    with monkeypatch.context() as patch:
                        for owner, target in targets:
                            patch.setattr(owner, target, replacement)
                        error = client.post("/chat/completions", json=_chat(long_model, stream=stream))
                    assert error.status_code == 500 and error.json()["error"]["type"] == "server_error", error.text
                    peers.add(_peer(error))
                    after = client.post("/chat/completions", json=_chat(long_model))
                    served += after.status_code == 200
                    peers.add(_peer(after))
            print(f"500 {kind}: next request served {served} of 40, on {len(peers)} connection(s)")
            assert served == 40 and len(peers) == 1, kind


def _start_long(endpoint: Endpoint, model: str, stream: bool) -> socket.socket:
    """Send a long request on a raw socket (a client that can leave at any moment), return once it generates."""
    body = json.dumps(_chat(model, LONG, stream=stream)).encode()
    port = int(endpoint.url.rsplit(":", 1)[1].split("/")[0])
    sock = socket.create_connection((DEFAULT_HOST, port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {endpoint.api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    _wait_for(lambda: _health(endpoint, model)["in_flight"] == 1)
    return sock


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_client_that_leaves_frees_the_model_for_the_next(busy: Endpoint, long_model: str,
                                                          stream: bool) -> None:
    """A plain request's generation used to run to its end after its client left (the next waited seconds)."""
    with _client(busy) as client:
        start = time.perf_counter()
        full = client.post("/chat/completions", json=_chat(long_model, LONG))
        full_s = time.perf_counter() - start
        assert full.json()["usage"]["completion_tokens"] == LONG
    first_token: list[float] = []

    def next_request() -> None:
        with _client(busy) as client, client.stream("POST", "/chat/completions",
                                                     json=_chat(long_model, 8, stream=True)) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    first_token.append(time.perf_counter())
                    break

    leaver = _start_long(busy, long_model, stream)
    waiter = threading.Thread(target=next_request)
    waiter.start()
    _wait_for(lambda: _health(busy, long_model)["waiting"] == 1)  # queued behind the one that will leave
    left = time.perf_counter()
    leaver.close()
    waiter.join(timeout=60)
    freed_ms = (first_token[0] - left) * 1000
    print(f"{'streamed' if stream else 'plain'}: the next request's first token {freed_ms:.0f} ms after the "
          f"client left (the whole generation: {full_s * 1000:.0f} ms)")
    assert freed_ms < min(1000, full_s * 1000 / 3)  # the target is 150 ms; generous on a shared machine


def test_past_the_queue_bound_a_503_with_retry_after(busy: Endpoint, long_model: str) -> None:
    leaver = _start_long(busy, long_model, False)
    with _client(busy) as client:
        queued = threading.Thread(target=lambda: _client(busy).post("/chat/completions", json=_chat(long_model)))
        queued.start()
        _wait_for(lambda: _health(busy, long_model)["waiting"] == 1)
        refused = client.post("/chat/completions", json=_chat(long_model))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        leaver.close()
        queued.join(timeout=60)
        again = client.post("/chat/completions", json=_chat(long_model))  # the same connection, once there is room
        assert again.status_code == 200 and _peer(again) == _peer(refused)


def test_a_request_past_its_timeout_gets_a_504_and_frees_the_model(long_model: str) -> None:
    with background([long_model], request_timeout_s=1) as running, _client(running) as client:
        start = time.perf_counter()
        late = client.post("/chat/completions", json=_chat(long_model, 8000))
        late_s = time.perf_counter() - start
        assert late.status_code == 504 and late.json()["error"]["code"] == "timeout", late.text
        start = time.perf_counter()
        after = client.post("/chat/completions", json=_chat(long_model, 8))
        after_s = time.perf_counter() - start
        print(f"504 after {late_s * 1000:.0f} ms (timeout 1000 ms); the next request took {after_s * 1000:.0f} ms")
        assert 1 <= late_s < 5 and after.status_code == 200 and after_s < 1 and _peer(after) == _peer(late)
        with client.stream("POST", "/chat/completions", json=_chat(long_model, 8000, stream=True)) as streamed:
            events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
        assert streamed.status_code == 200 and json.loads(events[-1][6:])["error"]["code"] == "timeout"


def test_metrics_health_and_the_access_log(busy: Endpoint, long_model: str) -> None:
    root = busy.url.removesuffix("/v1")

    def samples() -> dict:
        text = httpx.get(f"{root}/metrics").text  # no key needed, as for /health
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    before = samples()
    with _client(busy) as client:
        assert client.post("/chat/completions", json=_chat(long_model, 5)).status_code == 200
        assert client.post("/chat/completions", json=_chat("nope")).status_code == 404
    after = samples()
    ok = ("slmops_requests_total", (("model", long_model), ("path", "/v1/chat/completions"), ("status", "200")))
    missing = ("slmops_requests_total", (("model", ""), ("path", "/v1/chat/completions"), ("status", "404")))
    assert after[ok] == before.get(ok, 0) + 1 and after[missing] == before.get(missing, 0) + 1
    model = (("model", long_model),)
    assert after[("slmops_generation_tokens_total", model)] == before[("slmops_generation_tokens_total", model)] + 5
    assert after[("slmops_prompt_tokens_total", model)] > before[("slmops_prompt_tokens_total", model)]
    assert after[("slmops_time_to_first_token_seconds_count", model)] == \
        before[("slmops_time_to_first_token_seconds_count", model)] + 1
    assert after[("slmops_time_per_output_token_seconds_count", model)] > 0
    assert after[("slmops_queue_depth", model)] == 0 and after[("slmops_requests_in_flight", model)] == 0
    health = httpx.get(f"{root}/health").json()
    assert health == {"status": "ok", "models": {long_model: {"state": "ready", "waiting": 0, "in_flight": 0}}}
    lines = Path(busy.service.log_path).read_text().splitlines()
    assert f"POST /v1/chat/completions model={long_model} status=200 tokens=" in "\n".join(lines)
    logged = [line for line in lines if line.startswith("POST /v1/chat/completions model=- status=404")]
    assert logged and logged[-1].split()[-1].startswith("ms=")
