"""A request inside the batch engine and how its next token is picked, as ONNX Runtime GenAI picks it.

The order is GenAI's: the repetition penalty, end-of-sequence held back before ``search.min_length``,
a grammar's mask, then greedy or top-k/top-p sampling (:class:`~slmops.toolkit.runtimes.decode_settings.Sampling`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from slmops.toolkit.runtimes.decode_settings import Sampling

Emit = Callable[[int | None, str | None], None]


class Sequence:
    """One request in the engine: its prompt, its tokens so far and where they go.

    ``emit(token, None)`` gets each token as it is picked; ``emit(None, reason)`` the end
    (``stop``, ``length``, ``cancelled`` or ``error: ...``).
    """

    def __init__(self, prompt: list[int], sampling: Sampling, emit: Emit) -> None:
        self.prompt, self.sampling, self.emit = prompt, sampling, emit
        self.generated: list[int] = []
        self.seen = np.unique(np.asarray(prompt, dtype=np.int64))  # the ids the repetition penalty applies to
        self._seen = set(self.seen.tolist())
        self.rng = np.random.default_rng(sampling.seed)
        self.length = 0  # tokens in the cache row
        self.adapter = ""  # the adapter it runs with (a key of BatchEngine.adapters; "": the graph alone)
        self.cancelled = threading.Event()
        #: Its whole prompt as the prefix cache kept it, when its first token came from the kept logits at submit
        #: (a :class:`~slmops.toolkit.runtimes.prefix_cache.Kept`; None: picked in the batch).
        self.kept = None
        #: A grammar its tokens must follow (:class:`~slmops.toolkit.runtimes.constrained.Constraint`; None: any).
        self.constraint = None
        #: With :meth:`BatchEngine.submit`'s ``record_gaps``: each greedy step's margin of the chosen token's
        #: score over the next best (a near tie is where batched numerics may pick the other token).
        self.gaps: list[float] | None = None

    def cancel(self) -> None:
        """Stop at the next step and free the row (from any thread)."""
        self.cancelled.set()


def take(sequence: Sequence, token: int, eos_ids: tuple[int, ...], capacity: int) -> str | None:
    """Add ``token`` to ``sequence``'s answer (its grammar and the repetition penalty's ids follow).

    Returns:
        Why the sequence ends with it: ``stop`` (an end-of-sequence id or its grammar done), ``length`` (its
        ``max_new`` tokens, or its cache row of ``capacity`` positions full); else None.
    """
    if sequence.constraint is not None:
        sequence.constraint.advance(token)
    sequence.generated.append(token)
    if token not in sequence._seen:
        sequence._seen.add(token)
        sequence.seen = np.append(sequence.seen, token)
    if token in eos_ids or (sequence.constraint is not None and sequence.constraint.done):
        return "stop"
    if len(sequence.generated) >= sequence.sampling.max_new or sequence.length + 1 >= capacity:
        return "length"
    return None


def greedy(sampling: Sampling) -> bool:
    return sampling.temperature == 0 or sampling.top_k == 1


def pick_rows(live: list[tuple[int, Sequence]], logits: np.ndarray, eos_ids: tuple[int, ...]) -> list[int]:
    """The tokens of ``live``'s ``(logits row, sequence)`` pairs: the greedy rows without a grammar or recorded
    gaps in one ``argmax`` (the same token as each row's own), the others one by one (:func:`pick`)."""
    plain = []
    for row, sequence in live:
        adjust(sequence, logits[row], eos_ids)
        plain.append(sequence.constraint is None and sequence.gaps is None and greedy(sequence.sampling))
    rows = [row for (row, _), simple in zip(live, plain, strict=True) if simple]
    if len(rows) == len(logits):
        best = logits.argmax(axis=1)
    elif rows:
        best = np.empty(len(logits), np.int64)
        best[rows] = logits[rows].argmax(axis=1)
    return [int(best[row]) if simple else pick(sequence, logits[row])
            for (row, sequence), simple in zip(live, plain, strict=True)]

def adjust(sequence: Sequence, logits: np.ndarray, eos_ids: tuple[int, ...]) -> None:
    """ONNX Runtime GenAI's first steps, in place: the repetition penalty, then end-of-sequence held back
    before ``min_length``."""
    sampling = sequence.sampling  # logits: this sequence's row of a fresh output, changed in place
    if sampling.repetition_penalty != 1.0:
        seen = logits[sequence.seen]
        logits[sequence.seen] = np.where(seen > 0, seen / sampling.repetition_penalty,
                                         seen * sampling.repetition_penalty)
    if len(sequence.prompt) + len(sequence.generated) < sampling.min_length:
        logits[list(eos_ids)] = -np.inf

def pick(sequence: Sequence, logits: np.ndarray) -> int:
    """After :func:`adjust`, ONNX Runtime GenAI's order: the grammar's mask, then greedy or top-k/top-p
    sampling."""
    sampling = sequence.sampling
    if sequence.constraint is not None:
        sequence.constraint.mask(logits)
    if greedy(sampling):
        if sequence.gaps is not None:
            top = np.partition(logits, -2)[-2:]
            sequence.gaps.append(float(top[1] - top[0]))
        return int(np.argmax(logits))
    k = sampling.top_k or logits.size
    candidates = np.argpartition(-logits, k - 1)[:k] if k < logits.size else np.arange(logits.size)
    candidates = candidates[np.argsort(-logits[candidates], kind="stable")]
    scaled = logits[candidates] / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)
        probs = probs[:keep] / probs[:keep].sum()
        candidates = candidates[:keep]
    return int(sequence.rng.choice(candidates, p=probs))
