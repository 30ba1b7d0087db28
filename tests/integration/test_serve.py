"""``slmops serve``: the OpenAI-compatible endpoint, driven by the official ``openai`` client and curl.

The server runs in its own process over the real Foundry Local runtime, on a tiny random
model (its answers are noise, but greedy noise: repeatable, so answers can be compared).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path

import openai
import pytest

from slmops.toolkit.core.errors import InputError, ModelNotFoundError
from slmops.toolkit.endpoint.app import create_app
from slmops.toolkit.endpoint.cli import Endpoint, background, check_options
from slmops.toolkit.stages import bench, register

MODEL = "tiny-serve"
ASK = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def endpoint(tiny_int4: Path):
    register.register(tiny_int4, MODEL)
    with background([MODEL]) as running:
        yield running


def _post(url: str, body: str | bytes, *extra: str) -> tuple[int, dict]:
    """POST with curl; (status, JSON body)."""
    data = body.encode() if isinstance(body, str) else body
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", *extra,
                          "--data-binary", "@-", f"{url}/chat/completions"], input=data, capture_output=True,
                         check=True).stdout.decode()
    text, status = out.rsplit("\n", 1)
    return int(status), json.loads(text)


def test_sync_client_answers_with_usage_and_finish_reason(endpoint: Endpoint) -> None:
    client = endpoint.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    choice = answer.choices[0]
    assert answer.model == MODEL and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= 12 and answer.usage.prompt_tokens > 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    again = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == choice.message.content  # greedy is repeatable


def test_without_max_tokens_an_answer_may_fill_the_context_and_chat_caps_its_default(endpoint: Endpoint) -> None:
    """The runtime's own default (2048 tokens) does not fit a 512-token model: every plain call got a 500."""
    from slmops.toolkit.runtimes.foundry import LoadedModel

    answer = endpoint.client().chat.completions.create(model=MODEL, messages=ASK, temperature=0, frequency_penalty=0,
                                                       presence_penalty=0, logit_bias={})  # neutral: accepted
    assert answer.choices[0].finish_reason in ("stop", "length")
    with LoadedModel(MODEL) as model:
        context = model.context_length
        assert answer.usage.total_tokens <= context == 512
        reply = list(model.chat("Tell me about the sea.", max_tokens=512, temperature=0))[-1]  # was refused
        assert reply.prompt_tokens + reply.completion_tokens <= context


def test_streaming_matches_the_plain_answer(endpoint: Endpoint) -> None:
    client = endpoint.client()
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_sampling_options_and_stop(endpoint: Endpoint) -> None:
    client = endpoint.client()

    def ask(**options):
        return client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, **options).choices[0]

    sampled = [ask(temperature=1.0, top_p=0.9, seed=seed).message.content for seed in (1, 2, 1)]
    assert sampled[0] == sampled[2]  # the seed is honoured
    greedy = ask(temperature=0).message.content
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    cut = ask(temperature=0, stop=[stop])
    assert stop not in cut.message.content and greedy.startswith(cut.message.content)
    assert cut.finish_reason == "stop" and len(cut.message.content) < len(greedy)


def test_concurrent_async_clients_get_their_own_answers(endpoint: Endpoint) -> None:
    prompts = [f"Item {i}: describe a {word}." for i, word in enumerate(["cat", "ship", "cloud", "stone", "tree"])]
    client = endpoint.client()
    alone = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=10,
                                            temperature=0).choices[0].message.content for p in prompts]

    async def together() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=endpoint.url, api_key=endpoint.api_key, max_retries=0)

        async def one(prompt: str) -> str:
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=10, temperature=0, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        try:
            return list(await asyncio.gather(*(one(p) for p in prompts * 2)))
        finally:
            await aclient.close()

    assert asyncio.run(together()) == alone * 2  # never interleaved inside one generation


def test_curl_streams_server_sent_events(endpoint: Endpoint) -> None:
    body = json.dumps({"model": MODEL, "messages": ASK, "max_tokens": 5, "temperature": 0, "stream": True})
    out = subprocess.run(["curl", "-sN", "-H", "Content-Type: application/json", "-d", body,
                          f"{endpoint.url}/chat/completions"], capture_output=True, text=True, check=True).stdout
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(("body", "status", "param"), [
    ("{not json", 400, None),
    ('["a list"]', 400, None),
    (json.dumps({"model": "nope", "messages": ASK}), 404, "model"),
    (json.dumps({"model": MODEL}), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": []}), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}), 400, "messages.0.role"),
    (json.dumps({"model": MODEL, "messages": ASK, "max_tokens": -1}), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "messages": ASK, "max_tokens": "5"}), 400, "max_tokens"),
    (json.dumps({"model": MODEL, "messages": ASK, "temperature": 3}), 400, "temperature"),
    (json.dumps({"model": MODEL, "messages": ASK, "seed": 2**31}), 400, "seed"),
    (json.dumps({"model": MODEL, "messages": ASK, "n": 2}), 400, "n"),
    # Options the runtime lacks: accepted at their neutral values only, never silently ignored.
    (json.dumps({"model": MODEL, "messages": ASK, "frequency_penalty": 0.5}), 400, "frequency_penalty"),
    (json.dumps({"model": MODEL, "messages": ASK, "presence_penalty": -1.0}), 400, "presence_penalty"),
    (json.dumps({"model": MODEL, "messages": ASK, "logit_bias": {"5": 10}}), 400, "logit_bias"),
    (json.dumps({"model": MODEL, "messages": ASK, "stop": ["a", "b", "c", "d", "e"]}), 400, "stop"),
    (json.dumps({"model": MODEL, "messages": ASK, "tools": [{"type": "function"}]}), 400, "tools[0].function"),
    (json.dumps({"model": MODEL, "messages": ASK, "tools": [{"type": "function", "function": {"name": "f"}}]}), 400,
     "tools"),  # a valid tool, but the model was registered without tool-call markers
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "   "}]}), 400, None),
    (json.dumps({"model": MODEL, "messages": ASK, "response_format": {"type": "yaml"}}), 400, "response_format"),
    (json.dumps({"model": MODEL, "messages": ASK, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}}), 400,
     "response_format"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "word " * 400}]}), 400, "messages"),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}), 413, None),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(endpoint: Endpoint, body: str,
                                                                    status: int, param: str | None) -> None:
    got, answer = _post(endpoint.url, body)
    assert got == status, answer
    error = answer["error"]
    assert error["message"] and error["type"] and error["param"] == param
    ok, after = _post(endpoint.url, json.dumps({"model": MODEL, "messages": ASK, "max_tokens": 2}))
    assert ok == 200 and after["choices"][0]["message"]["content"] is not None


def test_unknown_routes_and_methods_are_json_errors(endpoint: Endpoint) -> None:
    for command, status in ((["curl", "-s", "-w", "\n%{http_code}", f"{endpoint.url}/embeddings"], 404),
                            (["curl", "-s", "-w", "\n%{http_code}", f"{endpoint.url}/chat/completions"], 405)):
        text, code = subprocess.run(command, capture_output=True, text=True, check=True).stdout.rsplit("\n", 1)
        assert int(code) == status and json.loads(text)["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        endpoint.client().chat.completions.create(model="nope", messages=ASK)


def test_a_non_loopback_host_needs_a_key_and_the_key_is_checked(endpoint: Endpoint) -> None:
    with pytest.raises(InputError, match="--api-key"):
        check_options([MODEL], "0.0.0.0", 8000, None)
    with pytest.raises(InputError, match="api-key"):
        check_options([MODEL], "0.0.0.0", 8000, " ")
    with pytest.raises(ModelNotFoundError):
        check_options(["nope"], "127.0.0.1", 8000, None)
    with background([MODEL], api_key="s3cret") as keyed:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url, api_key="wrong", max_retries=0).models.list()
        assert [m.id for m in keyed.client().models.list().data] == [MODEL]


def test_503_while_the_model_loads(endpoint: Endpoint) -> None:
    from fastapi.testclient import TestClient

    app = create_app([MODEL])  # without entering its lifespan nothing has loaded yet
    client = TestClient(app)
    answer = client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert answer.json()["error"]["code"] == "model_loading"
    assert client.get("/health").status_code == 503
    assert client.get("/v1/models").json()["data"][0]["status"] == "loading"


def test_sigterm_lets_in_flight_requests_finish(endpoint: Endpoint) -> None:
    with background([MODEL]) as running:
        client = running.client()
        started = threading.Event()
        results: dict[int, list[str]] = {}

        def ask(i: int) -> None:
            stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=64, temperature=0,
                                                    stream=True)
            reasons = []
            for chunk in stream:
                started.set()
                reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
            results[i] = reasons

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]  # queued behind each other
        for thread in threads:
            thread.start()
        assert started.wait(timeout=60)
        code = running.stop()  # SIGTERM while one streams and the others wait their turn
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(len(reasons) == 1 and reasons[0] in ("stop", "length") for reasons in results.values())
    assert code in (0, -15)  # uvicorn re-raises the SIGTERM it handled, after the graceful shutdown
    log = running.service.log_path.read_text()
    assert "Traceback" not in log and "in-flight requests finished, models unloaded" in log


def test_bench_endpoint_engine_measures_the_same_prompts(endpoint: Endpoint, tmp_path: Path) -> None:
    rows = bench.bench([MODEL], engines=("foundry-local", "endpoint"), endpoint=(endpoint.url, endpoint.api_key),
                       prompt_lengths=[32], gen_lengths=[8], repeats=2, warmup=1, progress=False)
    by_engine = {r.engine: r for r in rows}
    assert set(by_engine) == {"foundry-local", "endpoint"}
    assert by_engine["endpoint"].prompt_tokens == by_engine["foundry-local"].prompt_tokens
    assert by_engine["endpoint"].decode_tps > 0 and by_engine["endpoint"].ttft_ms > 0
    report = bench.write_results(rows, tmp_path)
    ratio = report.endpoint_ratios[0]
    assert ratio.decode_ratio == round(by_engine["endpoint"].decode_tps / by_engine["foundry-local"].decode_tps, 3)
    with pytest.raises(InputError, match="endpoint"):
        bench.bench([MODEL], engines=("endpoint",))


def test_response_format_constrains_even_a_random_model(endpoint: Endpoint) -> None:
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                               "size": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["city", "size"], "additionalProperties": False,
              # llguidance's option: no free whitespace, or a random model pads with it until max_tokens
              "x-guidance": {"whitespace_flexible": False}}
    client = endpoint.client()
    free = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=48, temperature=0)
    with pytest.raises(ValueError):
        jsonschema.validate(json.loads(free.choices[0].message.content), schema)  # noise is not JSON
    for response_format in ({"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
                            {"type": "json_schema", "json_schema": schema}):
        answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=96, temperature=0,
                                                response_format=response_format)
        jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    loose = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=96, temperature=0,
                                           response_format={"type": "json_object"})
    assert isinstance(json.loads(loose.choices[0].message.content), dict)
