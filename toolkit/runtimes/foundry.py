"""The one place that talks to Foundry Local (``foundry-local-sdk``), in-process.

Foundry Local's manager is a per-process singleton bound to one model cache; this module
opens it lazily, offline (telemetry off, local catalog only), and reopens it when a
different cache is asked for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.core import artifacts, platform, settings, workers
from toolkit.core.errors import (
    FoundryRequestError,
    InvalidOptionError,
    InvalidPromptError,
    ModelNotFoundError,
    PromptTooLongError,
)
from toolkit.domain import templates
from toolkit.domain.results.bench import decode_tps

APP_NAME = "slmops"
_ROLES = ("system", "user", "assistant")
_state: dict[str, object] = {}


def manager(cache: str | Path | None = None, web_urls: str | None = None):
    """The process's ``FoundryLocalManager`` for ``cache`` (see :func:`settings.cache_dir`).

    ``web_urls`` binds Foundry Local's own web service (started with ``start_web_service``).
    """
    from foundry_local_sdk import Configuration, FoundryLocalManager, LogLevel

    folder = settings.cache_dir(cache)
    current = FoundryLocalManager.instance
    if current is not None and _state.get("cache") == folder and (web_urls is None or _state.get("web") == web_urls):
        return current
    if current is not None:
        current.close()
    folder.mkdir(parents=True, exist_ok=True)
    # A registration killed half-way left scratch, or its previous folder moved aside: recover first.
    artifacts.remove_stale(models_root(folder))
    config = Configuration(
        app_name=APP_NAME, model_cache_dir=str(folder), app_data_dir=str(folder / ".app"),
        logs_dir=str(folder / ".logs"), disable_nonessential_telemetry=True, log_level=LogLevel.ERROR,
        web=Configuration.WebService(urls=web_urls) if web_urls else None,
    )
    FoundryLocalManager.initialize(config)
    _state["cache"], _state["web"] = folder, web_urls
    return FoundryLocalManager.instance


def local_catalog(cache: str | Path | None = None):
    """Foundry Local's local (bring-your-own-model) catalog; never the online one."""
    from foundry_local_sdk import CatalogType

    return manager(cache).get_catalog(CatalogType.LOCAL)


def catalog_register(path: str | Path, model_id: str, display_name: str, cache: str | Path | None = None) -> None:
    """Register the model folder ``path`` as ``model_id`` (``NAME:VERSION``) in the local catalog, replacing it if there.

    Raises:
        Exception: the SDK's own (``FoundryLocalException`` with the native message) when it refuses.
    """
    from foundry_local_sdk import ModelInfoBuilder

    catalog = local_catalog(cache)
    if catalog.get_model_variant(model_id) is not None:
        catalog.unregister_model(model_id)
    with ModelInfoBuilder() as metadata:
        metadata.set_string_property("task", "chat-completion")
        metadata.set_string_property("display_name", display_name)
        catalog.register_model(model_path=str(path), model_id=model_id, metadata=metadata)


def models_root(cache: str | Path | None = None) -> Path:
    """``<cache>/models/custom``: the Foundry cache folder for custom models (the ``foundry`` CLI's layout)."""
    return settings.cache_dir(cache) / "models" / "custom"


def find_model(name: str, cache: str | Path | None = None):
    """The registered ``IModel`` for ``name`` (alias, latest version) or ``name:version``.

    Raises:
        ModelNotFoundError: nothing registered under that name; lists what is.
    """
    catalog = local_catalog(cache)
    model = catalog.get_model_variant(name) if ":" in name else catalog.get_model(name)
    if model is None:
        raise ModelNotFoundError(name, sorted(m.id for m in catalog.list_models()))
    return model


@dataclass(frozen=True)
class Generation:
    """One answer and what it cost.

    Attributes:
        text: The generated text.
        prompt_tokens: Tokens in the prompt the runtime built (template applied).
        completion_tokens: Tokens generated.
        ttft_s: Seconds to the first streamed token.
        total_s: Seconds for the whole request.
        finish_reason: ``stop``, ``length`` or ``error``.
        harness_s: Seconds spent in this toolkit's code (and its caller's) between streamed
            pieces, the benchmark harness's own cost.
        setup_s: Seconds of the time to first token spent opening the runtime's session and
            request, before the runtime started on the prompt.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    finish_reason: str
    harness_s: float = 0.0
    setup_s: float = 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one."""
        return decode_tps(self.completion_tokens, self.ttft_s, self.total_s)


@dataclass(frozen=True)
class Usage:
    """What the runtime counted for one request, and why it stopped (the end of a chunk stream)."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str

    def as_openai(self) -> dict[str, int]:
        """The OpenAI ``usage`` object."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def native_response_format(response_format: dict | None) -> dict | None:
    """OpenAI's ``response_format`` in the form Foundry Local's constrained decoding takes.

    OpenAI wraps a schema as ``{"name", "schema", "strict"}``; the runtime wants the schema
    object itself under ``json_schema`` (a string fails natively). ``text`` means no constraint.
    """
    if not response_format or response_format.get("type") == "text":
        return None
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema")
        if isinstance(inner, dict) and isinstance(inner.get("schema"), dict):
            inner = inner["schema"]
        return {"type": "json_schema", "json_schema": inner}
    return dict(response_format)


def _check_stop(stop: object) -> list[str]:
    """``stop`` as a list of at most four non-empty strings (OpenAI's rule)."""
    items = [stop] if isinstance(stop, str) else stop
    if stop is None:
        return []
    if not isinstance(items, list) or len(items) > 4 or not all(isinstance(s, str) and s for s in items):
        raise InvalidOptionError("stop", stop, "a non-empty string or a list of up to 4 of them")
    return items


def check_response_format(response_format: object) -> None:
    """Refuse a ``response_format`` the runtime cannot constrain to.

    Raises:
        InvalidOptionError: not ``text``, ``json_object`` or ``json_schema`` with a valid JSON Schema.
    """
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidOptionError("response_format", response_format,
                                 "{'type': 'text' | 'json_object' | 'json_schema', ...}")
    if kind == "json_schema":
        import jsonschema

        schema = native_response_format(response_format)["json_schema"]
        if not isinstance(schema, dict):
            raise InvalidOptionError("response_format", response_format,
                                     "json_schema as {'name': ..., 'schema': {a JSON Schema object}}")
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InvalidOptionError("response_format", "json_schema",
                                     f"a valid JSON Schema ({exc.message})") from exc


class LoadedModel:
    """A registered model loaded in Foundry Local, answering chat requests.

    Every request goes through the runtime's own OpenAI-format layer (an OpenAI JSON request
    in a fresh ``ChatSession``), the layer Foundry Local's web service uses: the same sampling
    options, ``stop`` sequences and constrained decoding (``response_format``) reach it from
    Python, from the checklist and from ``slmops serve``. :meth:`chat` keeps a conversation by
    sending its whole history each turn.

    Example:
        >>> with LoadedModel("smollm2-int4") as model:
        ...     model.generate([{"role": "user", "content": "Hi"}], max_tokens=8).text
    """

    def __init__(self, name: str, cache: str | Path | None = None) -> None:
        self.model = find_model(name, cache)
        self.name = name
        if not self.model.is_loaded:
            self.model.load()
        self._history: list[dict[str, str]] = []
        self._encode = None
        self.last_setup_s = 0.0  # session and request setup of the latest streamed request

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the conversation and unload the model."""
        self._history = []
        if self.model.is_loaded:
            self.model.unload()

    @property
    def context_length(self) -> int:
        """The model's context in tokens (0 when unknown)."""
        return int(self.model.context_length or 0)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the prompt ``messages`` become, rendered with the model's chat template as ChatSession does."""
        if self._encode is None:
            from tokenizers import Tokenizer

            folder = Path(self.model.get_path())
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            jinja = templates.read_chat_template(folder, runtime=True)  # as ChatSession reads it
            bos, eos = templates.special_tokens(folder)
            self._encode = lambda msgs: tokenizer.encode(
                templates.render_jinja(jinja, msgs, bos_token=bos, eos_token=eos), add_special_tokens=False).ids
        return list(self._encode(messages))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens :meth:`prompt_ids` gives."""
        return len(self.prompt_ids(messages))

    def check(self, messages: list[dict[str, str]], max_tokens: int | None, temperature: float = 0.0,
              seed: int = 0, *, top_p: float | None = None, stop: object = None,
              response_format: object = None) -> None:
        """Refuse a request the runtime should never see, before anything is sent.

        Raises:
            InvalidPromptError: malformed or empty messages.
            InvalidOptionError: an option out of range (names the option and what is allowed).
            PromptTooLongError: prompt plus ``max_tokens`` (None: the prompt alone) over the context.
        """
        well_formed = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages)
        if not well_formed:
            raise InvalidPromptError("Messages must be a non-empty list of {'role': system|user|assistant, "
                                     "'content': text}.")
        if not any(m["content"].strip() for m in messages):
            raise InvalidPromptError("The prompt is empty: give the model some text to answer.")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise InvalidOptionError("max_tokens", max_tokens, "a whole number >= 1")
        if type(temperature) not in (int, float) or not 0 <= temperature <= 2:  # also refuses nan
            raise InvalidOptionError("temperature", temperature, "a number from 0 to 2")
        if top_p is not None and (type(top_p) not in (int, float) or not 0 < top_p <= 1):
            raise InvalidOptionError("top_p", top_p, "a number above 0 and at most 1")
        if type(seed) is not int or not 0 <= seed < 2**31:  # the runtime parses it as a 32-bit int
            raise InvalidOptionError("seed", seed, f"a whole number from 0 to {2**31 - 1}")
        _check_stop(stop)
        check_response_format(response_format)
        context = self.context_length
        if context:
            prompt = self.prompt_tokens(messages)
            if prompt + (max_tokens or 1) > context:
                raise PromptTooLongError(prompt, max_tokens or 1, context)

    def body(self, messages: list[dict[str, str]], *, max_tokens: int | None = 256, temperature: float = 0.0,
             seed: int = 0, top_p: float | None = None, stop: object = None, response_format: object = None,
             stream: bool = True) -> dict:
        """The OpenAI-format request the runtime gets for these (already checked) options."""
        # The runtime parses the value as a 32-bit float ("stof"): a denormal such as 1e-50 fails
        # there (found by fuzzing), and any temperature that small is greedy anyway.
        temperature = round(float(temperature), 6)
        body: dict = {"model": self.name, "messages": messages, "temperature": temperature, "seed": seed}
        optional = {"max_tokens": max_tokens, "top_p": top_p, "stop": _check_stop(stop) or None,
                    "response_format": native_response_format(response_format), "stream": stream or None}
        body.update({k: v for k, v in optional.items() if v is not None})
        if temperature == 0:
            body["metadata"] = {"top_k": "1"}  # greedy, exactly
        return body

    def native_stream(self, body: dict) -> Iterator[str | Usage]:
        """Send an OpenAI-format request (``stream`` set) and yield the runtime's chunks as JSON text, then a :class:`Usage`.

        Closing the iterator early cancels the generation.

        Raises:
            FoundryRequestError: the runtime refused or failed the request.
        """
        from foundry_local_sdk import ChatSession, FinishReason, FoundryLocalException, Request
        from foundry_local_sdk.items import TextItem, TextItemType

        try:
            start = time.perf_counter()
            with ChatSession(self.model) as session, Request() as request:
                session.set_streaming(True)
                request.add_item(TextItem(json.dumps(body), TextItemType.OPENAI_JSON))
                self.last_setup_s = time.perf_counter() - start
                with session.process_streaming_request(request) as stream:
                    for item in stream:
                        yield item.text
                    final = stream.final_response
                    usage = final.get_usage()
                    reason = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}.get(
                        final.finish_reason, "error")
        except FoundryLocalException as exc:
            raise FoundryRequestError(str(exc)) from exc
        yield Usage(usage.prompt_tokens, usage.completion_tokens, reason)

    def native_complete(self, body: dict) -> dict:
        """Send an OpenAI-format request (no ``stream``) and return the runtime's ``chat.completion`` object."""
        from foundry_local_sdk import ChatSession, FoundryLocalException, Request
        from foundry_local_sdk.items import TextItem, TextItemType

        try:
            with ChatSession(self.model) as session, Request() as request:
                request.add_item(TextItem(json.dumps(body), TextItemType.OPENAI_JSON))
                with session.process_request(request) as response:
                    return json.loads(response.get_item(0).text)
        except FoundryLocalException as exc:
            raise FoundryRequestError(str(exc)) from exc

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0,
               seed: int = 0, top_p: float | None = None, stop: object = None,
               response_format: object = None) -> Iterator[str | Generation]:
        """Yield text pieces as they come, then one final :class:`Generation` (a fresh session; greedy by default).

        Args:
            messages: The whole conversation.
            max_tokens: Most tokens to generate.
            temperature: 0 is greedy.
            seed: Sampling seed (recorded, so a sampled answer can be repeated).
            top_p: Nucleus sampling share.
            stop: A string or up to four strings that end the answer (not included).
            response_format: OpenAI's ``{"type": "json_object"}`` or ``{"type": "json_schema",
                "json_schema": {"name": ..., "schema": {...}}}``: the runtime constrains decoding to it.

        Raises:
            InvalidPromptError, InvalidOptionError, PromptTooLongError: before anything is sent.
            FoundryRequestError: the runtime refused or failed the request.
        """
        self.check(messages, max_tokens, temperature, seed, top_p=top_p, stop=stop, response_format=response_format)
        body = self.body(messages, max_tokens=max_tokens, temperature=temperature, seed=seed, top_p=top_p,
                         stop=stop, response_format=response_format)
        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        harness = 0.0
        for chunk in self.native_stream(body):
            arrived = time.perf_counter()
            if isinstance(chunk, Usage):
                yield Generation("".join(pieces), chunk.prompt_tokens, chunk.completion_tokens,
                                 (first or arrived) - start, arrived - start, chunk.finish_reason, harness,
                                 self.last_setup_s)
                return
            choices = json.loads(chunk).get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
            if text:
                if first is None:
                    first = arrived
                pieces.append(text)
                yield text
            harness += time.perf_counter() - arrived

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0, **options: object) -> Generation:
        """Answer ``messages`` (a whole conversation) in a fresh session; the options are :meth:`stream`'s."""
        result = None
        for piece in self.stream(messages, max_tokens=max_tokens, temperature=temperature, seed=seed, **options):
            result = piece
        assert isinstance(result, Generation)
        return result

    def chat(self, message: str, *, system: str | None = None, max_tokens: int = 512,
             temperature: float = 0.7, seed: int = 0) -> Iterator[str | Generation]:
        """One turn of a multi-turn conversation kept in this object (see :meth:`reset`).

        ``system`` applies when the conversation starts.
        """
        history = self._history or ([{"role": "system", "content": system}] if system else [])
        messages = [*history, {"role": "user", "content": message}]
        answer = None
        for piece in self.stream(messages, max_tokens=max_tokens, temperature=temperature, seed=seed):
            answer = piece
            yield piece
        if isinstance(answer, Generation):
            self._history = [*messages, {"role": "assistant", "content": answer.text}]

    def reset(self) -> None:
        """Forget the multi-turn conversation of :meth:`chat`."""
        self._history = []


#: Suffix of a fixed-length registration's name (see :func:`fixed_length_registration`).
FIXED_LENGTH_SUFFIX = "-fixed-length"


@contextlib.contextmanager
def fixed_length_registration(name: str, cache: str | Path | None = None) -> Iterator[str]:
    """Register the same model files again with generation that never ends before max tokens; yield its name.

    Timing needs a known number of generated tokens, and a terse fine-tune ends its turn after
    a few whatever the prompt asks. Foundry Local's request options have no minimum length (its
    native layer reads ``max_tokens``, ``top_k``, ``random_seed``, ``do_sample`` ... but no
    ``min_length``), while ONNX Runtime GenAI's ``search.min_length`` in ``genai_config.json``
    holds the end-of-sequence tokens back until the sequence (prompt included) is that long. This
    copy (every file linked, not copied, except ``genai_config.json``, whose ``min_length`` is the
    context) runs the same weights, graph, threads and runtime; only the end of turn is held back,
    so every request generates exactly its ``max_tokens``. It lives outside ``models/custom``
    (``slmops ls`` never lists it) and is unregistered and removed on exit.

    Example:
        >>> with fixed_length_registration("smollm2-int4") as timing:
        ...     LoadedModel(timing).generate(messages, max_tokens=32).completion_tokens
        32
    """
    source = Path(find_model(name, cache).get_path())
    base = name.split(":")[0]
    timing = f"{base}{FIXED_LENGTH_SUFFIX}"
    folder = settings.cache_dir(cache) / ".fixed-length" / base
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "genai_config.json":
            (folder / item.name).symlink_to(item.resolve())
    config = json.loads((source / "genai_config.json").read_text())
    search = config.setdefault("search", {})
    search["min_length"] = int(search.get("max_length") or config["model"].get("context_length") or 1 << 20)
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))
    model_id = f"{timing}:1"
    catalog_register(folder, model_id, timing, cache)
    try:
        yield model_id
    finally:
        catalog = local_catalog(cache)
        variant = catalog.get_model_variant(model_id)
        if variant is not None:
            if variant.is_loaded:
                variant.unload()
            catalog.unregister_model(model_id)
        shutil.rmtree(folder, ignore_errors=True)


def _web_service_task(job: dict, _emit) -> dict:
    """Worker task: start Foundry Local's own web service and ask it for ``job["name"]``."""
    import urllib.error
    import urllib.request

    service = manager(job["cache"])
    find_model(job["name"], job["cache"]).load()
    service.start_web_service()
    try:
        url = service.urls[0].rstrip("/")
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
            listed = [m.get("id") for m in json.loads(response.read()).get("data", [])]
        body = json.dumps({"model": job["name"], "messages": [{"role": "user", "content": "Hi"}],
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
    return {"listed": listed, "chat_status": status}


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
        record = json.loads(record_path.read_text())
        if record.get("sdk") == sdk:
            return WebServiceProbe(**record)
    except (OSError, ValueError, TypeError):
        pass
    result = workers.run_worker("toolkit.runtimes.foundry", "web-service",
                                {"name": name, "cache": str(settings.cache_dir(cache))},
                                name="Foundry Local web service probe", timeout=120).result
    serves = name in result["listed"] and result["chat_status"] == 200
    detail = (f"foundry-local-sdk {sdk}'s web service serves locally registered models" if serves else
              f"foundry-local-sdk {sdk}'s web service does not serve locally registered models (/v1/models "
              f"listed {len(result['listed'])}, chat answered {result['chat_status']}): `slmops serve` runs "
              "its own OpenAI-compatible endpoint over the same runtime")
    probe = WebServiceProbe(serves, detail, sdk)
    artifacts.write_json(record_path, {"serves": serves, "detail": detail, "sdk": sdk})
    return probe


def serve_natively(names: list[str], host: str, port: int, cache: str | Path | None = None) -> None:
    """Serve ``names`` with Foundry Local's own web service until SIGTERM or SIGINT (where it serves them)."""
    service = manager(cache, web_urls=f"http://{host}:{port}")
    models = [find_model(name, cache) for name in names]
    for model in models:
        model.load()
    platform.block_stop_signals()
    service.start_web_service()
    print(f"Foundry Local's web service: {', '.join(service.urls)}/v1 serving {', '.join(names)}", flush=True)
    try:
        platform.wait_for_stop()
    finally:
        service.stop_web_service()
        for model in models:
            model.unload()


if __name__ == "__main__":
    workers.serve({"web-service": _web_service_task})
