"""``slmops serve --ray``: the endpoint as Ray Serve replicas of a model on a local two-node Ray cluster, asked
through the official ``openai`` client."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from slmops.toolkit.core import settings
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint import replicas
from slmops.toolkit.endpoint.cli import free_port
from slmops.toolkit.endpoint.options import ServeOptions
from slmops.toolkit.orchestration import cluster
from slmops.toolkit.stages import register

MODEL = "tiny-ray"


@pytest.fixture(scope="module")
def served(tiny_int4: Path):
    """Two Ray nodes of one CPU each, and the tiny model on Ray Serve with two replicas of one CPU each (so one
    replica runs on each node); yields the OpenAI base URL."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    register.register(tiny_int4, MODEL)
    small = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    ray_cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    ray_cluster.add_node(**small)
    ray_cluster.wait_for_nodes()
    try:
        cluster.connect(ray_cluster.address)
        yield replicas.deploy([MODEL], port=free_port(), replicas=2, replica_cpus=1, cache=settings.cache_dir(),
                              options=ServeOptions(batch_size=4))
    finally:
        serve.shutdown()
        ray.shutdown()
        ray_cluster.shutdown()


def test_both_replicas_on_both_nodes_answer_the_openai_client_alike(served: str) -> None:
    question = [{"role": "user", "content": "Name three colours."}]

    async def ask_all() -> list:
        client = openai.AsyncOpenAI(base_url=served, api_key="none", max_retries=0)
        try:
            return await asyncio.gather(*(client.chat.completions.with_raw_response.create(
                model=MODEL, messages=question, max_tokens=8, temperature=0) for _ in range(16)))
        finally:
            await client.close()

    raw = asyncio.run(ask_all())
    answered = Counter(r.headers[replicas.REPLICA_HEADER] for r in raw)
    nodes = {r.headers[replicas.NODE_HEADER] for r in raw}
    print(f"requests per replica: {dict(answered)}")
    assert len(answered) == 2 and len(nodes) == 2, (answered, nodes)
    texts = {r.parse().choices[0].message.content for r in raw}
    assert len(texts) == 1  # greedy: the same answer from either replica
    assert all(r.parse().choices[0].finish_reason == "length" and r.parse().usage.completion_tokens == 8 for r in raw)

    client = openai.OpenAI(base_url=served, api_key="none", max_retries=0)
    streamed = client.chat.completions.create(model=MODEL, messages=question, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == texts.pop()
    assert [model.id for model in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)
    with pytest.raises(openai.BadRequestError):  # the replica's own check, answered through the ingress
        client.chat.completions.create(model=MODEL, messages=question, max_tokens=-1)
    root = served.removesuffix("/v1")
    health = httpx.get(f"{root}/health").json()
    assert health["status"] == "ok" and health["models"][MODEL]["state"] == "ready"
    assert "slmops_requests_total" in httpx.get(f"{root}/metrics").text


def test_replicas_out_of_range_are_refused_before_anything_starts() -> None:
    with pytest.raises(InputError, match="--replicas"):
        replicas.deploy([MODEL], replicas=0)
