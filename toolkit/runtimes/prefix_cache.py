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

import numpy as np

#: Memory the kept prompts' keys and values of one model may take, in MiB (0: no prefix caching).
PREFIX_CACHE_MIB = 64


class PrefixCache:
    """Kept prompts' keys and values, least recently used first out.

    Args:
        budget_mib: Most memory the kept keys and values take, in MiB.
    """

    def __init__(self, budget_mib: int = PREFIX_CACHE_MIB) -> None:
        self.budget = budget_mib * 2**20
        self.size = 0
        #: ``(adapter, prompt tokens)``: each layer's keys and values ``[kv_heads, positions, head_size]``.
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], list[np.ndarray]] = OrderedDict()

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
        """How many of ``prompt``'s first positions a kept prompt holds (at most all but the last two)."""
        return max(0, min(self._longest(prompt, adapter)[0], len(prompt) - 2))

    def load(self, prompt: list[int], adapter: str, reuse: int, caches: list[np.ndarray], row: int) -> None:
        """Copy the first ``reuse`` positions of ``prompt`` (at most :meth:`match`'s) into ``row`` of ``caches``."""
        common, key = self._longest(prompt, adapter)
        assert key is not None and reuse <= common
        self.entries.move_to_end(key)
        for cache, kept in zip(caches, self.entries[key], strict=True):
            cache[row, :, :reuse] = kept[:, :reuse]

    def store(self, prompt: list[int], adapter: str, caches: list[np.ndarray], row: int) -> None:
        """Keep ``prompt``'s keys and values from ``row`` of ``caches`` (unless a kept prompt holds them all)."""
        if self._longest(prompt, adapter)[0] >= len(prompt):
            return
        kept = [cache[row, :, :len(prompt)].copy() for cache in caches]
        nbytes = sum(array.nbytes for array in kept)
        if nbytes > self.budget:
            return
        while self.size + nbytes > self.budget:
            self.size -= sum(array.nbytes for array in self.entries.popitem(last=False)[1])
        self.entries[(adapter, tuple(prompt))] = kept
        self.size += nbytes
