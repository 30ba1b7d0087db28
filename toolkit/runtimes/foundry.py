"""The one place that talks to Foundry Local (``foundry-local-sdk``), in-process: a loaded model and its chat.

Its parts: the manager and catalog (:mod:`~slmops.toolkit.runtimes.foundry_session`), what a request may hold
and what it returns (:mod:`~slmops.toolkit.runtimes.foundry_requests`), and Foundry Local's own web service
(:mod:`~slmops.toolkit.runtimes.foundry_web`); their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import (
    FoundryRequestError,
    InvalidOptionError,
    InvalidPromptError,
    PromptTooLongError,
)
from slmops.toolkit.domain import jinja_render, template_resolve, tools
from slmops.toolkit.runtimes.foundry_requests import (
    Generation,
    Usage,
    check_response_format,
    check_stop,
    merge_tool_call_deltas,
    native_response_format,
    well_formed,
)
from slmops.toolkit.runtimes.foundry_session import (
    catalog_register,
    find_model,
    local_catalog,
)
from slmops.toolkit.weights.context_limit import positions

#: How many recent prompts' token ids a loaded model keeps (:meth:`LoadedModel.prompt_ids`).
PROMPT_IDS_KEPT = 256


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

            # A served request asks for its prompt's ids three times (admission, checks, generation), each a render
            # and an encode: the recent prompts' ids are kept by their text (not where the template reads the clock).
            def encode(msgs: list[dict]) -> tuple[int, ...]:
                rendered = jinja_render.render_jinja(jinja, msgs, bos_token=bos, eos_token=eos)
                return tuple(tokenizer.encode(rendered, add_special_tokens=False).ids)

            kept = functools.lru_cache(maxsize=PROMPT_IDS_KEPT)(lambda key: encode(json.loads(key)))
            self._encode = encode if "strftime_now" in jinja else lambda msgs: kept(json.dumps(msgs, ensure_ascii=False))
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
        if not isinstance(messages, list) or not messages or not all(well_formed(m) for m in messages):
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
        check_stop(stop)
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
        optional = {"max_tokens": max_tokens, "top_p": top_p, "stop": check_stop(stop) or None,
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


