"""Chat requests on the continuous-batching engine, as OpenAI-format chunks (:class:`BatchedChat`).

A request without ``response_format`` or ``tools`` whose prompt and ``max_tokens`` fit the
engine's cache rows is decoded in the batch; it streams the same chunks, ``Usage`` and finish
reasons as Foundry Local's own layer (:meth:`LoadedModel.native_stream`), so the endpoint's jobs
and responses do not tell the two apart. The base's constrained decoding and tool calls stay on
Foundry Local, one request at a time; an adapter's (which Foundry Local cannot apply) are constrained
here (:mod:`slmops.toolkit.runtimes.constrained`), a tool request's answer sent whole at its end.
"""

from __future__ import annotations

import json
import queue
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from slmops.toolkit.domain.tools import MESSAGE_FRAME
from slmops.toolkit.runtimes import constrained
from slmops.toolkit.runtimes.batching import BatchEngine, Policy
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_requests import Usage
from slmops.toolkit.runtimes.prefix_cache import PREFIX_CACHE_MIB

#: How many tokens before the newest the incremental detokenizer decodes with it (as vLLM's), so that a
#: piece that depends on its left neighbour (a SentencePiece word's leading space) comes out right.
_CONTEXT_TOKENS = 5


class Detokenizer:
    """Text pieces of a growing token sequence, each exactly once (a piece ending in a partial character waits).

    Bytes that never make a character (a random model's) are dropped, as ONNX Runtime GenAI's
    streaming decoder drops them, rather than sent as U+FFFD.
    """

    def __init__(self, tokenizer, prompt: list[int]) -> None:
        self.tokenizer, self.ids = tokenizer, list(prompt)
        self.prefix = max(0, len(prompt) - _CONTEXT_TOKENS)
        self.read = len(prompt)

    def add(self, token: int) -> str:
        """The new text ``token`` completes (``""`` while a character is incomplete or the token is special)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):].replace("\ufffd", "")


class StopText:
    """Text held back while it may begin a ``stop`` sequence; cut at the first one found."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.sent = [s for s in stops if s], "", 0
        self.stopped = False

    def add(self, piece: str) -> str:
        """The text that can go out now that ``piece`` came (all of it once a stop sequence is found, cut there)."""
        self.text += piece
        for stop in self.stops:
            found = self.text.find(stop, max(0, self.sent - len(stop) + 1))
            if found >= 0:
                self.stopped, self.text = True, self.text[:found]
        safe = len(self.text)
        if not self.stopped:
            for stop in self.stops:
                for size in range(min(len(stop) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(stop[:size]):
                        safe = min(safe, len(self.text) - size)
                        break
        out, self.sent = self.text[self.sent:safe], max(self.sent, safe)
        return out

    def rest(self) -> str:
        """What was held back, at the end of a generation that found no stop sequence."""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


class BatchedChat:
    """One model's requests on a :class:`~slmops.toolkit.runtimes.batching.BatchEngine`.

    Args:
        model: The model loaded in Foundry Local (its prompt rendering, as ChatSession renders).
        batch_size: Most requests decoded together.
        policy: When waiting requests are prefilled.
        prefix_cache_mib: Memory for kept prompts' keys and values (:mod:`~slmops.toolkit.runtimes.prefix_cache`).
    """

    def __init__(self, model: LoadedModel, batch_size: int, policy: Policy,
                 prefix_cache_mib: int = PREFIX_CACHE_MIB) -> None:
        from tokenizers import Tokenizer

        folder = Path(model.model.get_path())
        self.model = model
        self.engine = BatchEngine(folder, batch_size, policy, prefix_cache_mib=prefix_cache_mib)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._grammars: constrained.Grammars | None = None

    def constraint(self, body: dict) -> constrained.Constraint | None:
        """The grammar ``body``'s tokens must follow (``response_format``, ``tools``; see :mod:`.constrained`)."""
        if not body.get("response_format") and not body.get("tools"):
            return None
        if self._grammars is None:  # the tokenizer's tables, built on the first constrained request
            engine = self.engine
            self._grammars = constrained.Grammars(engine.folder, engine.vocab, engine.settings.eos_ids)
        return self._grammars.constraint(body, self.model.markers)

    def close(self) -> None:
        """Stop the engine."""
        self.engine.close()

    def accepts(self, body: dict) -> bool:
        """Whether ``body`` (a checked runtime request) is decoded in the batch."""
        if body.get("response_format") or body.get("tools"):
            return False
        prompt = len(self.model.prompt_ids(body["messages"]))
        return prompt + int(body.get("max_tokens") or 1) <= self.engine.capacity

    def stream(self, body: dict, adapter: str = "") -> Iterator[str | Usage]:
        """The chunks of ``body``'s answer as JSON text, then its :class:`Usage` (closing the iterator cancels it);
        ``adapter``: the engine's adapter it runs with (``""``: none)."""
        prompt = self.model.prompt_ids(body["messages"], body.get("tools"), body.get("tool_choice"))
        max_tokens = int(body.get("max_tokens") or self.engine.capacity - len(prompt))
        greedy = body.get("metadata", {}).get("top_k") == "1"
        sampling = self.engine.settings.sampling(max_tokens, 0.0 if greedy else body["temperature"],
                                                 body.get("top_p"), body["seed"])
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        calls = constrained.calling(body, self.model.markers)
        sequence = self.engine.submit(prompt, sampling, lambda token, reason: tokens.put((token, reason)),
                                      adapter=adapter, constraint=self.constraint(body))
        chunk = _Chunks(body["model"])
        try:
            yield chunk.role()
            if calls:
                yield from self._calls(tokens, prompt, chunk)
                return
            text, stop = Detokenizer(self.tokenizer, prompt), StopText(_stops(body.get("stop")))
            count, reason = 0, None
            while reason is None:
                token, reason = tokens.get()
                if token is not None:
                    count += token not in self.engine.settings.eos_ids  # as Foundry Local counts
                    piece = stop.add(text.add(token))
                    if stop.stopped:
                        sequence.cancel()
                        reason = "stop"
                    if piece:
                        yield chunk.content(piece)
            if reason.startswith("error"):
                raise RuntimeError(f"The batch engine failed: {reason.removeprefix('error: ')}")
            if not stop.stopped and (rest := stop.rest()):
                yield chunk.content(rest)
            reason = "stop" if stop.stopped else reason
            yield chunk.end(reason)
            yield Usage(len(prompt), count, reason)
        finally:
            sequence.cancel()  # a no-op once it has ended


    def _calls(self, tokens: queue.SimpleQueue, prompt: list[int], chunk: _Chunks) -> Iterator[str | Usage]:
        """A tool request's answer, whole: its calls (``<start>[...]<end>``) or its text (the frame cut off)."""
        generated, reason = [], None
        while reason is None:
            token, reason = tokens.get()
            if token is not None:
                generated.append(token)
        if reason.startswith("error"):
            raise RuntimeError(f"The batch engine failed: {reason.removeprefix('error: ')}")
        count = sum(token not in self.engine.settings.eos_ids for token in generated)
        markers = self.model.markers
        if generated and generated[0] == markers.start_id and markers.end_id in generated:
            end = generated.index(markers.end_id)
            yield chunk.calls(constrained.tool_calls(self.tokenizer.decode(generated[1:end])))
            reason = "tool_calls"
        elif text := self.tokenizer.decode(generated, skip_special_tokens=True).removeprefix(MESSAGE_FRAME):
            yield chunk.content(text)
        yield chunk.end(reason)
        yield Usage(len(prompt), count, reason)


def _stops(stop: object) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


class _Chunks:
    """``chat.completion.chunk`` objects of one answer, as compact JSON text (as Foundry Local writes them)."""

    def __init__(self, model: str) -> None:
        self.id, self.created, self.model = f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model

    def _chunk(self, delta: dict, reason: str | None = None) -> str:
        return json.dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]},
                          separators=(",", ":"))

    def role(self) -> str:
        return self._chunk({"role": "assistant", "content": ""})

    def content(self, text: str) -> str:
        return self._chunk({"content": text})

    def calls(self, calls: list[dict]) -> str:
        return self._chunk({"tool_calls": calls})

    def end(self, reason: str) -> str:
        return self._chunk({}, reason)
