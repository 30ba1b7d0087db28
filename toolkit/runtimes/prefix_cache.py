"""Prefix caching for :mod:`slmops.toolkit.runtimes.batching`: the keys and values of recently prefilled prompts.

Requests to a served model mostly begin alike (the chat template's system prompt), so the engine keeps
each prefilled prompt's keys and values, and a new prompt sharing a prefix with a kept one (the longest
common prefix in token ids, with the same adapter) gets them copied into its cache row; only the rest
of the prompt is prefilled, as a multi-token run on the row's past (GroupQueryAttention places the new
positions after each row's past, as the attention mask says). At least the last two positions are
always prefilled: a one-position run takes the INT4 MatMul's single-row path, whose numbers differ
from a prompt's enough to change greedy answers. The kept prompts take at most ``budget_mib``; the least
recently used go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

#: Memory the kept prompts' keys and values of one model may take, in MiB (0: no prefix caching).
PREFIX_CACHE_MIB = 64


@dataclass(frozen=True)
class Kept:
    """One kept prompt: each layer's keys and values ``[kv_heads, positions, head_size]``, and the logits its
    prefill gave for the first token (``[vocab]``, before any penalty; None where they were not kept)."""

    arrays: list[np.ndarray]
    logits: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays) + (0 if self.logits is None else self.logits.nbytes)


class PrefixCache:
    """Kept prompts' keys and values, least recently used first out.

    Args:
        budget_mib: Most memory the kept keys and values take, in MiB.
    """

    def __init__(self, budget_mib: int = PREFIX_CACHE_MIB, *, whole_only: bool = False) -> None:
        self.budget = budget_mib * 2**20
        self.size = 0
        #: Whether only a prompt asked again whole is taken (:meth:`match` finds no shorter prefix): where a prompt's
        #: rest computed on a kept prefix would not give what the whole prompt gives (see the engine).
        self.whole_only = whole_only
        #: ``(adapter, prompt tokens)``: what is kept of that prompt (:class:`Kept`).
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], Kept] = OrderedDict()

    def _longest(self, prompt: list[int], adapter: str) -> tuple[int, tuple[str, tuple[int, ...]] | None]:
        if (whole := (adapter, tuple(prompt))) in self.entries:  # a prompt asked again: no longer prefix can match
            return len(prompt), whole
        best, best_key = 0, None
        for key in self.entries:
            if key[0] != adapter:
                continue
            tokens = key[1]
            n = min(len(tokens), len(prompt))
            same = np.flatnonzero(np.asarray(tokens[:n]) != np.asarray(prompt[:n]))
            common = int(same[0]) if same.size else n
            if common > best:
                best, best_key = common, key
        return best, best_key

    def match(self, prompt: list[int], adapter: str) -> int:
        """How many of ``prompt``'s first positions a kept prompt holds (at most all but the last two; none with
        :attr:`whole_only`)."""
        return 0 if self.whole_only else max(0, min(self._longest(prompt, adapter)[0], len(prompt) - 2))

    def kept_whole(self, prompt: list[int], adapter: str) -> Kept | None:
        """What is kept of ``prompt`` asked again whole, with its first token's logits (else None); from any thread
        (a read: an entry dropped later stays whole in the caller's hands)."""
        kept = self.entries.get((adapter, tuple(prompt)))
        return kept if kept is not None and kept.logits is not None else None

    def touch(self, prompt: list[int], adapter: str) -> None:
        """Mark ``prompt`` kept whole as just used (the least recently used go first)."""
        if (key := (adapter, tuple(prompt))) in self.entries:
            self.entries.move_to_end(key)

    def first_logits(self, prompt: list[int], adapter: str) -> np.ndarray | None:
        """The first token's logits of ``prompt`` kept whole (its keys and values all in :meth:`load`'s reach), else
        None; the caller may change the array returned (a copy)."""
        kept = self.entries.get((adapter, tuple(prompt)))
        return None if kept is None or kept.logits is None else kept.logits.copy()

    def load(self, prompt: list[int], adapter: str, reuse: int, caches: list[np.ndarray], row: int) -> None:
        """Copy the first ``reuse`` positions of ``prompt`` (at most :meth:`match`'s, or all of a prompt
        :meth:`first_logits` finds) into ``row`` of ``caches``."""
        common, key = self._longest(prompt, adapter)
        assert key is not None and reuse <= common
        self.entries.move_to_end(key)
        for cache, kept in zip(caches, self.entries[key].arrays, strict=True):
            cache[row, :, :reuse] = kept[:, :reuse]

    def store(self, prompt: list[int], adapter: str, caches: list[np.ndarray], row: int,
              logits: np.ndarray | None = None) -> None:
        """Keep ``prompt``'s keys and values from ``row`` of ``caches`` (unless a kept prompt holds them all) and
        ``logits``, the first token's logits its prefill gave (kept as a copy; None: not kept)."""
        key = (adapter, tuple(prompt))
        if self._longest(prompt, adapter)[0] >= len(prompt):
            kept = self.entries.get(key)
            if kept is not None and kept.logits is None and logits is not None:
                self._put(key, Kept(kept.arrays, logits.copy()))
            return
        self._put(key, Kept([cache[row, :, :len(prompt)].copy() for cache in caches],
                            None if logits is None else logits.copy()))

    def _put(self, key: tuple[str, tuple[int, ...]], kept: Kept) -> None:
        if (old := self.entries.pop(key, None)) is not None:
            self.size -= old.nbytes
        if kept.nbytes > self.budget:
            return
        while self.size + kept.nbytes > self.budget:
            self.size -= self.entries.popitem(last=False)[1].nbytes
        self.entries[key] = kept
        self.size += kept.nbytes
