"""Foundry Local's own OpenAI-compatible web service: whether it serves locally registered models (probed in a
child, once per SDK version), and serving with it where it does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import codec, settings, system, workers
from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.runtimes.foundry_session import find_model, manager


@dataclass(frozen=True)
class WebServiceJob:
    """What the web-service probe's child is asked (the ``web-service`` task's payload).

    Attributes:
        name: The registered model to ask for.
        cache: The Foundry Local cache folder.
    """

    name: str
    cache: str


@dataclass(frozen=True)
class WebServiceSeen:
    """What Foundry Local's own web service answered (the ``web-service`` task's result).

    Attributes:
        listed: The model ids ``/v1/models`` listed.
        chat_status: The HTTP status of a one-token chat request for the model.
    """

    listed: tuple[str, ...]
    chat_status: int


def _web_service_task(payload: dict, _emit) -> dict:
    """Worker task: start Foundry Local's own web service and ask it for the model of a :class:`WebServiceJob`."""
    import urllib.error
    import urllib.request

    job = codec.load(WebServiceJob, payload)
    service = manager(job.cache)
    find_model(job.name, job.cache).load()
    service.start_web_service()
    try:
        url = service.urls[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
            listed = [str(m.get("id")) for m in json.loads(response.read()).get("data", [])]
        body = json.dumps({"model": job.name, "messages": [{"role": "user", "content": "Hi"}],
                           "max_tokens": 1}).encode()
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
    finally:
        service.stop_web_service()
    return codec.dump(WebServiceSeen(tuple(listed), status))


@dataclass(frozen=True)
class WebServiceProbe:
    """Whether Foundry Local's own web service serves a locally registered model.

    Attributes:
        serves: ``/v1/models`` lists it and a chat request to it succeeds.
        detail: What was seen, in words.
        sdk: The foundry-local-sdk version probed.
    """

    serves: bool
    detail: str
    sdk: str


def probe_web_service(name: str, cache: str | Path | None = None,
                      record_dir: str | Path | None = None) -> WebServiceProbe:
    """Ask Foundry Local's built-in web service (in a child process: it logs its catalog retries) for ``name``.

    The answer depends on the SDK version, not on the model, so it is kept per version in
    ``record_dir`` (default: the cache) as ``.slmops-web-service.json`` and the probe (about
    5 s offline) runs once.
    """
    import importlib.metadata

    sdk = importlib.metadata.version("foundry-local-sdk")
    record_path = settings.cache_dir(record_dir or cache) / ".slmops-web-service.json"
    try:
        kept = codec.read(WebServiceProbe, record_path)
        if kept.sdk == sdk:
            return kept
    except SlmopsError:  # none yet, or unreadable: probe again
        pass
    job = WebServiceJob(name, str(settings.cache_dir(cache)))
    seen = codec.load(WebServiceSeen, workers.run_worker("slmops.toolkit.runtimes.foundry_web", "web-service", codec.dump(job),
                                                       name="Foundry Local web service probe", timeout=120).result)
    serves = name in seen.listed and seen.chat_status == 200
    detail = (f"foundry-local-sdk {sdk}'s web service serves locally registered models" if serves else
              f"foundry-local-sdk {sdk}'s web service does not serve locally registered models (/v1/models "
              f"listed {len(seen.listed)}, chat answered {seen.chat_status}): `slmops serve` runs "
              "its own OpenAI-compatible endpoint over the same runtime")
    probe = WebServiceProbe(serves, detail, sdk)
    codec.write(record_path, probe)
    return probe


def serve_natively(names: list[str], host: str, port: int, cache: str | Path | None = None) -> None:
    """Serve ``names`` with Foundry Local's own web service until SIGTERM or SIGINT (where it serves them)."""
    service = manager(cache, web_urls=f"http://{host}:{port}")
    models = [find_model(name, cache) for name in names]
    for model in models:
        model.load()
    system.block_stop_signals()
    service.start_web_service()
    print(f"Foundry Local's web service: {', '.join(service.urls)}/v1 serving {', '.join(names)}", flush=True)
    try:
        system.wait_for_stop()
    finally:
        service.stop_web_service()
        for model in models:
            model.unload()


if __name__ == "__main__":
    workers.serve({"web-service": _web_service_task})
