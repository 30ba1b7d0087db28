"""The one place that talks to Foundry Local (``foundry-local-sdk``), in-process.

Foundry Local's manager is a per-process singleton bound to one model cache; this module
opens it lazily, offline (telemetry off, local catalog only), and reopens it when a
different cache is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.core import artifacts, settings
from toolkit.core.errors import (
    FoundryRequestError,
    InvalidOptionError,
    InvalidPromptError,
    ModelNotFoundError,
    PromptTooLongError,
)
from toolkit.domain import templates

APP_NAME = "slmops"
_ROLES = ("system", "user", "assistant")
_state: dict[str, object] = {}


def manager(cache: str | Path | None = None):
    """The process's ``FoundryLocalManager`` for ``cache`` (see :func:`settings.cache_dir`)."""
    from foundry_local_sdk import Configuration, FoundryLocalManager, LogLevel

    folder = settings.cache_dir(cache)
    current = FoundryLocalManager.instance
    if current is not None and _state.get("cache") == folder:
        return current
    if current is not None:
        current.close()
    folder.mkdir(parents=True, exist_ok=True)
    # A registration killed half-way left scratch, or its previous folder moved aside: recover first.
    artifacts.remove_stale(models_root(folder))
    config = Configuration(
        app_name=APP_NAME, model_cache_dir=str(folder), app_data_dir=str(folder / ".app"),
        logs_dir=str(folder / ".logs"), disable_nonessential_telemetry=True, log_level=LogLevel.ERROR,
    )
    FoundryLocalManager.initialize(config)
    _state["cache"] = folder
    return FoundryLocalManager.instance


def local_catalog(cache: str | Path | None = None):
    """Foundry Local's local (bring-your-own-model) catalog; never the online one."""
    from foundry_local_sdk import CatalogType

    return manager(cache).get_catalog(CatalogType.LOCAL)


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
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    finish_reason: str
    harness_s: float = 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one."""
        decode_s = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_s if self.completion_tokens > 1 and decode_s > 0 else 0.0


class LoadedModel:
    """A registered model loaded in Foundry Local, answering chat requests.

    Each :meth:`generate` call starts from a fresh session, so calls are independent;
    :meth:`chat` keeps one multi-turn session.

    Example:
        >>> with LoadedModel("smollm2-int4") as model:
        ...     model.generate([{"role": "user", "content": "Hi"}], max_tokens=8).text
    """

    def __init__(self, name: str, cache: str | Path | None = None) -> None:
        self.model = find_model(name, cache)
        self.name = name
        if not self.model.is_loaded:
            self.model.load()
        self._chat = None
        self._encode = None

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the chat session and unload the model."""
        if self._chat is not None:
            self._chat._close()
            self._chat = None
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
            jinja = templates.read_chat_template(folder)
            bos, eos = templates.special_tokens(folder)
            self._encode = lambda msgs: tokenizer.encode(
                templates.render_jinja(jinja, msgs, bos_token=bos, eos_token=eos), add_special_tokens=False).ids
        return list(self._encode(messages))

    def prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """How many tokens :meth:`prompt_ids` gives."""
        return len(self.prompt_ids(messages))

    def _check(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0,
               seed: int = 0) -> None:
        """Refuse a request the runtime should never see, before anything is sent."""
        well_formed = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str) for m in messages)
        if not well_formed:
            raise InvalidPromptError("Messages must be a non-empty list of {'role': system|user|assistant, "
                                     "'content': text}.")
        if not any(m["content"].strip() for m in messages):
            raise InvalidPromptError("The prompt is empty: give the model some text to answer.")
        if type(max_tokens) is not int or max_tokens < 1:
            raise InvalidOptionError("max_tokens", max_tokens, "a whole number >= 1")
        if type(temperature) not in (int, float) or not 0 <= temperature <= 2:  # also refuses nan
            raise InvalidOptionError("temperature", temperature, "a number from 0 to 2")
        if type(seed) is not int or not 0 <= seed < 2**31:  # the runtime parses it as a 32-bit int
            raise InvalidOptionError("seed", seed, f"a whole number from 0 to {2**31 - 1}")
        context = self.context_length
        if context:
            prompt = self.prompt_tokens(messages)
            if prompt + max_tokens > context:
                raise PromptTooLongError(prompt, max_tokens, context)

    @staticmethod
    def _options(max_tokens: int, temperature: float, seed: int):
        from foundry_local_sdk import RequestOptions, SearchOptions

        # The runtime parses the value as a 32-bit float ("stof"): a denormal such as 1e-50 fails
        # there (found by fuzzing), and any temperature that small is greedy anyway.
        temperature = round(float(temperature), 6)
        sample = temperature > 0
        return RequestOptions(search=SearchOptions(
            max_output_tokens=max_tokens, temperature=temperature if sample else 0.0, do_sample=sample,
            seed=seed, top_k=None if sample else 1,
        ))

    @staticmethod
    def _request(messages: list[dict[str, str]]):
        """The SDK request for ``messages`` (already checked by :meth:`_check`)."""
        from foundry_local_sdk import MessageItem, Request

        request = Request()
        for message in messages:
            builder = {"system": MessageItem.system, "user": MessageItem.user,
                       "assistant": MessageItem.assistant}[message["role"]]
            request.add_item(builder(message["content"]))
        return request

    def _stream(self, session, messages: list[dict[str, str]], max_tokens: int, temperature: float,
                seed: int) -> Iterator[str | Generation]:
        from foundry_local_sdk import FinishReason, FoundryLocalException, TextItem

        start = time.perf_counter()
        first = None
        pieces: list[str] = []
        harness = 0.0
        try:
            session.set_options(self._options(max_tokens, temperature, seed))
            session.set_streaming(True)
            with self._request(messages) as request, session.process_streaming_request(request) as stream:
                for item in stream:
                    arrived = time.perf_counter()
                    if isinstance(item, TextItem):
                        if first is None:
                            first = arrived
                        pieces.append(item.text)
                        yield item.text
                    harness += time.perf_counter() - arrived
                total = time.perf_counter() - start
                final = stream.final_response
                usage = final.get_usage()
                reason = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}.get(final.finish_reason, "error")
        except FoundryLocalException as exc:
            raise FoundryRequestError(str(exc)) from exc
        yield Generation("".join(pieces), usage.prompt_tokens, usage.completion_tokens,
                         (first or time.perf_counter()) - start, total, reason, harness)

    def stream(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0,
               seed: int = 0) -> Iterator[str | Generation]:
        """Yield text pieces as they come, then one final :class:`Generation` (fresh session).

        Raises:
            InvalidPromptError, InvalidOptionError, PromptTooLongError: before anything is sent.
            FoundryRequestError: the runtime refused or failed the request.
        """
        from foundry_local_sdk import ChatSession

        self._check(messages, max_tokens, temperature, seed)
        with ChatSession(self.model) as session:
            yield from self._stream(session, messages, max_tokens, temperature, seed)

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int = 256, temperature: float = 0.0,
                 seed: int = 0) -> Generation:
        """Answer ``messages`` (a whole conversation) in a fresh session; greedy by default."""
        result = None
        for piece in self.stream(messages, max_tokens=max_tokens, temperature=temperature, seed=seed):
            result = piece
        assert isinstance(result, Generation)
        return result

    def chat(self, message: str, *, system: str | None = None, max_tokens: int = 512,
             temperature: float = 0.7, seed: int = 0) -> Iterator[str | Generation]:
        """One turn of a multi-turn conversation kept in this object (see :meth:`reset`)."""
        from foundry_local_sdk import ChatSession

        messages = [{"role": "user", "content": message}]
        self._check(messages, max_tokens, temperature, seed)
        if self._chat is None:
            self._chat = ChatSession(self.model)
            if system:
                messages.insert(0, {"role": "system", "content": system})
        yield from self._stream(self._chat, messages, max_tokens, temperature, seed)

    def reset(self) -> None:
        """Forget the multi-turn conversation of :meth:`chat`."""
        if self._chat is not None:
            self._chat._close()
            self._chat = None
