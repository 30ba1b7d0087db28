"""The one place that talks to Foundry Local (``foundry-local-sdk``), in-process.

Foundry Local's manager is a per-process singleton bound to one model cache; this module
opens it lazily, offline (telemetry off, local catalog only), and reopens it when a
different cache is asked for.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, platform, settings, workers
from slmops.toolkit.core.errors import (
    FoundryRequestError,
    InvalidOptionError,
    InvalidPromptError,
    ModelNotFoundError,
    PromptTooLongError,
)
from slmops.toolkit.domain import jinja_render, template_resolve, tools
from slmops.toolkit.domain.results.bench import decode_tps
from slmops.toolkit.weights.context_limit import positions

APP_NAME = "slmops"
_ROLES = ("system", "user", "assistant", "tool")
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


def catalog_register(path: str | Path, model_id: str, display_name: str, cache: str | Path | None = None, *,
                     markers: tools.Markers | None = None, supports_tool_calling: bool = False) -> None:
    """Register the model folder ``path`` as ``model_id`` (``NAME:VERSION``) in the local catalog, replacing it if there.

    ``markers`` publishes the model's tool-call boundaries to the runtime (``tool_call_start`` and
    ``tool_call_end``; the folder's ``genai_config.json`` must carry the same tokens' ids as
    ``bot_token_id``/``eot_token_id``), so it can constrain and parse tool calls;
    ``supports_tool_calling`` sets the catalog flag of that name.

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
        if markers is not None:
            metadata.set_string_property("tool_call_start", markers.start)
            metadata.set_string_property("tool_call_end", markers.end)
        if supports_tool_calling:
            metadata.set_int_property("supports_tool_calling", 1)
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
        tool_calls: OpenAI ``tool_calls`` (``id``, ``type``, ``function.name``, ``function.arguments``
            as a JSON string) when the model called tools (``finish_reason`` ``tool_calls``).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    finish_reason: str
    harness_s: float = 0.0
    setup_s: float = 0.0
    tool_calls: tuple[dict, ...] = ()

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


def _well_formed(message: object) -> bool:
    """An OpenAI chat message this runtime takes: text content, an assistant's tool calls, a tool's result."""
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        return False
    content, calls = message.get("content"), message.get("tool_calls")
    if message["role"] == "assistant" and calls:
        return isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("function"), dict)
            and isinstance(c["function"].get("name"), str) and isinstance(c["function"].get("arguments"), str)
            for c in calls) and (content is None or isinstance(content, str))
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        return False
    return isinstance(content, str)


def merge_tool_call_deltas(calls: dict[int, dict], deltas: list[dict]) -> None:
    """Fold streamed ``delta.tool_calls`` pieces into whole calls (keyed by ``index``), as OpenAI clients do."""
    for piece in deltas:
        call = calls.setdefault(int(piece.get("index", 0)),
                                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = piece.get("id") or call["id"]
        function = piece.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


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
        #: The tool-call boundaries the model was registered with (None: it cannot call tools).
        self.markers = tools.registered_markers(Path(self.model.get_path()))

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Forget the conversation and unload the model."""
        self._history = []
        if self.model.is_loaded:
            self.model.unload()

    @functools.cached_property
    def context_length(self) -> int:
        """The model's context in tokens (0 when unknown).

        The catalog's (``genai_config.json``'s) figure, or the positions the model was built for
        when those are fewer (a config that claims more: a longer prompt would fail inside ONNX
        Runtime rather than be refused).
        """
        claimed = int(self.model.context_length or 0)
        folder = Path(self.model.get_path())
        built = positions(folder, artifacts.read_json(folder / "genai_config.json", {}) or {}).limit
        return min(claimed, built) if claimed and built else claimed or built

    def prompt_ids(self, messages: list[dict[str, str]], tool_defs: list[dict] | None = None,
                   tool_choice: object = None) -> list[int]:
        """Token ids of the prompt ``messages`` become, rendered with the model's chat template as ChatSession does.

        With ``tool_defs`` the runtime's tool protocol and calls are rendered as it renders them
        (:func:`tools.runtime_messages`).
        """
        if tool_defs or any(m.get("tool_calls") for m in messages):
            messages = tools.runtime_messages(messages, tool_defs, self.markers, tool_choice or "auto")
        if self._encode is None:
            from tokenizers import Tokenizer

            folder = Path(self.model.get_path())
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            jinja = template_resolve.read_chat_template(folder, runtime=True)  # as ChatSession reads it
            bos, eos = template_resolve.special_tokens(folder)
            self._encode = lambda msgs: tokenizer.encode(
                jinja_render.render_jinja(jinja, msgs, bos_token=bos, eos_token=eos), add_special_tokens=False).ids
        return list(self._encode(messages))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens :meth:`prompt_ids` gives."""
        return len(self.prompt_ids(messages))

    def room(self, messages: list[dict[str, str]], tool_defs: list[dict] | None = None,
             tool_choice: object = None) -> int | None:
        """Tokens the context leaves for an answer to ``messages`` (already checked), or None when it is unknown.

        An answer without a ``max_tokens`` of its own gets this: the runtime's own default (2048) is
        refused whenever it does not fit, as OpenAI's API would instead stop at the context's end.
        """
        context = self.context_length
        if not context:
            return None
        # Rendered as check() renders them (defaults filled in), so the count is the runtime's.
        offered = tools.check_tools(tool_defs) if tool_defs else None
        return context - len(self.prompt_ids(messages, offered, tool_choice))

    def check(self, messages: list[dict[str, str]], max_tokens: int | None, temperature: float = 0.0,
              seed: int = 0, *, top_p: float | None = None, stop: object = None,
              response_format: object = None, tool_defs: object = None, tool_choice: object = None) -> None:
        """Refuse a request the runtime should never see, before anything is sent.

        Raises:
            InvalidPromptError: malformed or empty messages.
            InvalidOptionError: an option out of range (names the option and what is allowed).
            ToolDefinitionError: ``tool_defs`` or ``tool_choice`` as OpenAI's API would refuse them.
            PromptTooLongError: prompt plus ``max_tokens`` (None: the prompt alone) over the context.
        """
        if not isinstance(messages, list) or not messages or not all(_well_formed(m) for m in messages):
            raise InvalidPromptError("Messages must be a non-empty list of {'role': system|user|assistant|tool, "
                                     "'content': text} (an assistant turn may carry 'tool_calls' instead of text; "
                                     "a tool turn needs its 'tool_call_id').")
        if not any((m.get("content") or "").strip() or m.get("tool_calls") for m in messages):
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
        if tool_defs is not None:
            tool_defs = tools.check_tools(tool_defs)
            if self.markers is None:
                raise tools.ToolDefinitionError("tools", f"The model {self.name!r} was registered without tool-call "
                                                "markers, so it cannot call tools: register it again with "
                                                "`slmops register DIR --name NAME --tool-markers START END`, or send "
                                                "no 'tools'.")
        tools.check_tool_choice(tool_choice, tool_defs)
        context = self.context_length
        if context:
            prompt = len(self.prompt_ids(messages, tool_defs, tool_choice))
            if prompt + (max_tokens or 1) > context:
                raise PromptTooLongError(prompt, max_tokens or 1, context)

    def body(self, messages: list[dict[str, str]], *, max_tokens: int | None = 256, temperature: float = 0.0,
             seed: int = 0, top_p: float | None = None, stop: object = None, response_format: object = None,
             stream: bool = True, tool_defs: list[dict] | None = None, tool_choice: object = None) -> dict:
        """The OpenAI-format request the runtime gets for these (already checked) options."""
        # The runtime parses the value as a 32-bit float ("stof"): a denormal such as 1e-50 fails
        # there (found by fuzzing), and any temperature that small is greedy anyway.
        temperature = round(float(temperature), 6)
        body: dict = {"model": self.name, "messages": messages, "temperature": temperature, "seed": seed}
        optional = {"max_tokens": max_tokens, "top_p": top_p, "stop": _check_stop(stop) or None,
                    "response_format": native_response_format(response_format), "stream": stream or None,
                    "tools": tools.check_tools(tool_defs) if tool_defs else None,
                    "tool_choice": tools.check_tool_choice(tool_choice, tool_defs)}
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
                    reason = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
                              FinishReason.TOOL_CALLS: "tool_calls"}.get(final.finish_reason, "error")
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
               response_format: object = None, tool_defs: list[dict] | None = None,
               tool_choice: object = None) -> Iterator[str | Generation]:
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
            tool_defs: OpenAI ``tools`` the model may call (a model registered with tool-call markers).
                Calls come in the final :class:`Generation`'s ``tool_calls``; the runtime constrains
                a call's arguments to its tool's JSON Schema.
            tool_choice: ``none``, ``auto`` (the default with tools), ``required`` or
                ``{"type": "function", "function": {"name": ...}}``.

        Raises:
            InvalidPromptError, InvalidOptionError, PromptTooLongError: before anything is sent.
            FoundryRequestError: the runtime refused or failed the request.
        """
        self.check(messages, max_tokens, temperature, seed, top_p=top_p, stop=stop, response_format=response_format,
                   tool_defs=tool_defs, tool_choice=tool_choice)
        body = self.body(messages, max_tokens=max_tokens, temperature=temperature, seed=seed, top_p=top_p,
                         stop=stop, response_format=response_format, tool_defs=tool_defs, tool_choice=tool_choice)
        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        calls: dict[int, dict] = {}
        harness = 0.0
        for chunk in self.native_stream(body):
            arrived = time.perf_counter()
            if isinstance(chunk, Usage):
                yield Generation("".join(pieces), chunk.prompt_tokens, chunk.completion_tokens,
                                 (first or arrived) - start, arrived - start, chunk.finish_reason, harness,
                                 self.last_setup_s, tuple(calls[i] for i in sorted(calls)))
                return
            choices = json.loads(chunk).get("choices") or [{}]
            delta = choices[0].get("delta") or {}
            merge_tool_call_deltas(calls, delta.get("tool_calls") or [])
            if delta.get("tool_calls") and first is None:
                first = arrived
            text = delta.get("content")
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
             temperature: float = 0.7, seed: int = 0, tool_defs: list[dict] | None = None,
             tool_choice: object = None, role: str = "user", tool_call_id: str | None = None
             ) -> Iterator[str | Generation]:
        """One turn of a multi-turn conversation kept in this object (see :meth:`reset`).

        ``system`` applies when the conversation starts. With ``tool_defs`` the model may answer
        with tool calls (kept in the history); send each result back as ``role="tool"`` with its
        ``tool_call_id``.
        """
        history = self._history or ([{"role": "system", "content": system}] if system else [])
        turn = {"role": role, "content": message, **({"tool_call_id": tool_call_id} if role == "tool" else {})}
        messages = [*history, turn]
        # At most what the context leaves, as `foundry model run` does: a 512-token default on a
        # 512-token model would refuse every message, and any long conversation would end in refusals.
        self.check(messages, None, temperature, seed, tool_defs=tool_defs, tool_choice=tool_choice)
        left = self.room(messages, tool_defs, tool_choice)
        max_tokens = min(max_tokens, left) if left else max_tokens
        for piece in self.stream(messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                 tool_defs=tool_defs, tool_choice=tool_choice):
            if isinstance(piece, Generation):  # kept before it is handed out: a caller may stop reading there
                reply = {"role": "assistant", "content": piece.text}
                if piece.tool_calls:
                    reply["tool_calls"] = list(piece.tool_calls)
                self._history = [*messages, reply]
            yield piece

    def add_tool_result(self, tool_call_id: str, content: str) -> None:
        """Add one tool's result to the conversation of :meth:`chat` without asking for an answer yet.

        For a turn with several calls: add all results but the last, then send the last with
        ``chat(result, role="tool", tool_call_id=...)``.
        """
        self._history.append({"role": "tool", "tool_call_id": tool_call_id, "content": content})

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
        record = json.loads(record_path.read_text())
        if record.get("sdk") == sdk:
            return WebServiceProbe(**record)
    except (OSError, ValueError, TypeError):
        pass
    job = WebServiceJob(name, str(settings.cache_dir(cache)))
    seen = codec.load(WebServiceSeen, workers.run_worker("slmops.toolkit.runtimes.foundry", "web-service", codec.dump(job),
                                                       name="Foundry Local web service probe", timeout=120).result)
    serves = name in seen.listed and seen.chat_status == 200
    detail = (f"foundry-local-sdk {sdk}'s web service serves locally registered models" if serves else
              f"foundry-local-sdk {sdk}'s web service does not serve locally registered models (/v1/models "
              f"listed {len(seen.listed)}, chat answered {seen.chat_status}): `slmops serve` runs "
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
