"""Continuous batching over plain ONNX Runtime: many sequences decoded together, joining and leaving between steps.

ONNX Runtime GenAI 0.14.1's ``Engine`` batches on CPU only statically (four requests at a time,
a new one waiting for the whole batch to finish), so this module schedules the model builder's
graph itself. The graph's GroupQueryAttention reads each row's length from the attention mask
and, when past and present are one buffer, writes each new key and value in place: the cache
is one buffer per layer of ``[batch, kv_heads, context, head_size]``, one row per sequence.
Active sequences hold rows ``0..n-1`` (a sequence that ends gives its row to the last one), so a
decode step runs on the contiguous view of the first ``n`` rows.

Waiting sequences join between steps, their prompts prefilled together (one run per step, within
:data:`PREFILL_POSITIONS`) on the next free rows: the prompts right-padded to the longest, the attention mask
marking each row's own tokens (GroupQueryAttention takes each row's length from it; the padding's keys and
values land past the row's length, where its first decode step writes over them). A prompt asked again whole
joins without a run, its keys, values and first token's logits copied from the prefix cache
(:mod:`~slmops.toolkit.runtimes.prefix_cache`). Each row's first token comes from its own last prompt position:
of every position's logits, or, where registration pruned the LM head to the last position, of a graph edited
to take each row's own (:mod:`~slmops.toolkit.runtimes.batch_sessions`); a pruned graph that cannot be edited
prefills only prompts of one length together.

Everything the model's ``genai_config.json`` says about generation applies, as ONNX Runtime
GenAI applies it: end-of-sequence ids (held back before ``search.min_length``), the repetition
penalty, and the sampling defaults (``top_k``, ``top_p``, ``temperature``) a request does not set.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import numpy as np

from slmops.toolkit.runtimes import batch_sessions
from slmops.toolkit.runtimes.batch_sessions import LAST_POSITIONS
from slmops.toolkit.runtimes.decode_settings import Sampling, read_settings
from slmops.toolkit.runtimes.prefix_cache import PREFIX_CACHE_MIB, PrefixCache
from slmops.toolkit.runtimes.sequences import Emit, Sequence, pick_rows, take

#: Memory the cache rows of one model may take, in MiB: each row holds ``capacity`` positions, the model's context
#: or fewer (a request that would not fit is answered outside the batch).
CACHE_BUDGET_MIB = 1024
#: Most positions, padding included, that one prefill run computes (rows times the longest prompt); a sequence past
#: it waits for the next step's run (a longer prompt is prefilled alone). A prompt costs about as much prefilled
#: alone as in a run of eight (the benchmarks page), so a small run gives its first tokens sooner, lets the running
#: sequences step between runs and spreads requests that came together.
PREFILL_POSITIONS = 64


class Policy(StrEnum):
    """When waiting sequences are prefilled.

    Either prefills one run per decode step. ``prefill-first``'s run holds as many waiting sequences
    as fit in the engine's ``prefill_positions`` (:data:`PREFILL_POSITIONS`); ``decode-first``'s holds
    one while sequences are running, so their tokens keep coming while a burst of new ones joins.
    """

    PREFILL_FIRST = "prefill-first"
    DECODE_FIRST = "decode-first"


class Phase(StrEnum):
    """Where the engine's thread spends its time (:attr:`BatchEngine.seconds`)."""

    PREFILL = "prefill"  # ONNX Runtime running prompts
    DECODE = "decode"  # ONNX Runtime running decode steps
    PICK = "pick"  # picking each row's token, handing it over, ending finished sequences
    OTHER = "other"  # admission, masks, prefix cache copies
    IDLE = "idle"  # nothing to run: waiting for a request


class BatchEngine:
    """Sequences of one model decoded together in a thread of their own (see the module docstring).

    Args:
        folder: The registered model folder (``model.onnx`` and ``genai_config.json``).
        batch_size: Most sequences decoded together; more wait in :meth:`submit`'s order.
        policy: When waiting sequences are prefilled (:class:`Policy`).
        prefill_positions: Most positions, padding included, of one prefill run (:data:`PREFILL_POSITIONS`).
        prefix_cache_mib: Memory for kept prompts' keys and values (:mod:`~slmops.toolkit.runtimes.prefix_cache`).
    """

    def __init__(self, folder: str | Path, batch_size: int = 8, policy: Policy = Policy.PREFILL_FIRST,
                 prefill_positions: int = PREFILL_POSITIONS, prefix_cache_mib: int = PREFIX_CACHE_MIB) -> None:
        self.folder, self.batch_size, self.policy = Path(folder), batch_size, Policy(policy)
        self.settings = s = read_settings(self.folder)
        # Prompts run on a pipeline's prompt graph; one whose rows change each other's results (``coupled``) prefills
        # one whole prompt per run, as if alone. ``last_input``: see :data:`LAST_POSITIONS`.
        self.session, self.prompt_session, self.last_input, coupled = batch_sessions.open_sessions(self.folder, s)
        self.prefill_positions = 0 if coupled else prefill_positions
        #: Whether one prefill run may hold prompts of different lengths (see the module docstring).
        self.mixed_lengths = self.last_input or self.session.get_outputs()[0].shape[1] != 1
        per_position = s.layers * 2 * s.kv_heads * s.head_size * 4 * batch_size
        #: Positions each cache row holds: prompt and answer of a batched request together.
        self.capacity = min(s.context, CACHE_BUDGET_MIB * 2**20 // per_position)
        shape = (batch_size, s.kv_heads, self.capacity, s.head_size)
        self.keys = [np.zeros(shape, np.float32) for _ in range(s.layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(s.layers)]
        self._bindings: dict[tuple[int, int, str, bool], object] = {}
        self._logits: dict[int, np.ndarray] = {}
        self.vocab = int(self.session.get_outputs()[0].shape[-1])
        self.active: list[Sequence] = []
        #: Graph inputs bound on the runs of each adapter's sequences, by adapter name (an adapter's LoRA matrices as
        #: ``OrtValue`` s, see :mod:`slmops.toolkit.runtimes.adapter_weights`); one batch runs one adapter.
        self.adapters: dict[str, dict[str, object]] = {}
        self.inbox: queue.Queue[Sequence | None] = queue.Queue()
        self.waiting: list[Sequence] = []
        #: Tokens and ends picked but not yet handed over (see :meth:`_hand_over`).
        self._outbox: list[tuple[Sequence, int | None, str | None]] = []
        self.steps = 0
        #: Prefill runs so far (each prefills one or more waiting sequences together).
        self.prefills = 0
        #: Prompt positions prefilled so far (a prefix taken from :attr:`prefixes` is not prefilled again).
        self.prefilled = 0
        #: Sequences admitted without a run: their whole prompt kept with its first token's logits (:attr:`prefixes`).
        self.kept_admissions = 0
        self.prefixes = PrefixCache(prefix_cache_mib, whole_only=coupled)
        #: Seconds the engine's thread has spent in each :class:`Phase` (:meth:`phase_seconds` adds a wait under way).
        self.seconds = dict.fromkeys(Phase, 0.0)
        self._idle_since: float | None = None
        #: Called with the number of sequences of every decode step (for a batch size histogram).
        self.on_step: Callable[[int], None] | None = None
        self.thread = threading.Thread(target=self._loop, name=f"batch-{self.folder.name}", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], sampling: Sampling, emit: Emit, record_gaps: bool = False,
               adapter: str = "", constraint=None) -> Sequence:
        """Queue a sequence; its tokens go to ``emit`` from the engine's thread (see :attr:`Sequence.gaps`), each
        computed with ``adapter``'s inputs (:attr:`adapters`; ``""``: the graph alone) and allowed by ``constraint``
        (:attr:`Sequence.constraint`).

        A prompt asked again whole (:meth:`PrefixCache.kept_whole`) gets its first token here, in the caller's
        thread, from the kept logits: it does not wait for the running step to end before it joins the batch.
        """
        sequence = Sequence(prompt, sampling, emit)
        sequence.adapter, sequence.constraint = adapter, constraint
        sequence.gaps = [] if record_gaps else None
        kept = self.prefixes.kept_whole(prompt, adapter)
        if kept is not None:
            sequence.kept, sequence.length = kept, len(prompt)
            [token] = pick_rows([(0, sequence)], kept.logits[None].copy(), self.settings.eos_ids)
            reason = take(sequence, token, self.settings.eos_ids, self.capacity)
            emit(token, None)
            if reason is not None:  # ended at its first token: it never needs a row
                emit(None, reason)
                return sequence
        self.inbox.put(sequence)
        return sequence

    def phase_seconds(self) -> dict[Phase, float]:
        """:attr:`seconds` as of now, from any thread (an idle wait under way counted up to now)."""
        since = self._idle_since
        seconds = dict(self.seconds)
        if since is not None and self._idle_since is since:
            seconds[Phase.IDLE] += time.perf_counter() - since
        return seconds

    def close(self) -> None:
        """Finish the thread (sequences still running end with ``cancelled``)."""
        self.inbox.put(None)
        self.thread.join()

    def _loop(self) -> None:
        while True:
            start, timed = time.perf_counter(), sum(self.seconds.values())
            if not self._collect():
                self._hand_over()
                for sequence in self.active + self.waiting:
                    sequence.emit(None, "cancelled")
                return
            try:
                self._admit()
                if self.active:
                    self._decode()
            except Exception as exc:  # noqa: BLE001 (every running sequence ends with the error)
                self._hand_over()
                for sequence in self.active:
                    sequence.emit(None, f"error: {type(exc).__name__}: {exc}")
                self.active = []
            self.seconds[Phase.OTHER] += time.perf_counter() - start - (sum(self.seconds.values()) - timed)

    def _collect(self) -> bool:
        """Move new sequences to the waiting list (blocking while nothing runs); False once closed."""
        block = not self.active and not self.waiting
        if block:
            self._hand_over()
        while True:
            if block:
                self._idle_since = time.perf_counter()
            try:
                item = self.inbox.get(block=block)
            except queue.Empty:
                return True
            finally:
                if block:
                    since, self._idle_since = self._idle_since, None
                    self.seconds[Phase.IDLE] += time.perf_counter() - since
            if item is None:
                return False
            self.waiting.append(item)
            block = False

    def _admit(self) -> None:
        """Prefill waiting sequences into free rows (one kept whole without a run), as :class:`Policy` says."""
        self.waiting = [s for s in self.waiting if not self._dropped(s)]
        room = self.batch_size - len(self.active)
        # One adapter per batch: the running batch's (else the first waiting sequence's) sequences that came before
        # any other adapter's join; the others wait until the batch has drained.
        head = self.active or self.waiting
        adapter = head[0].adapter if head else ""
        room = min(room, next((i for i, s in enumerate(self.waiting) if s.adapter != adapter), len(self.waiting)))
        if room <= 0:
            return
        room -= self._admit_kept(room)
        if room <= 0 or not self.waiting:
            return
        reuse = self._reuse()
        group, longest = self.waiting[:len(reuse) or 1], len(self.waiting[0].prompt)
        if not reuse and (self.policy is Policy.PREFILL_FIRST or not self.active):
            for sequence in self.waiting[1:room]:
                if (len(group) + 1) * max(longest, len(sequence.prompt)) > self.prefill_positions or (
                        not self.mixed_lengths and len(sequence.prompt) != longest):
                    break
                group.append(sequence)
                longest = max(longest, len(sequence.prompt))
        self._prefill(group, reuse or [0] * len(group))
        self.waiting = self.waiting[len(group):]

    def _admit_kept(self, room: int) -> int:
        """Admit, without a run, the sequences among the first ``room`` waiting whose whole prompt is kept with its
        first token's logits: their keys and values are copied into the next free rows; their first tokens were
        picked at :meth:`submit`, or (a prompt kept after its sequence came) are picked now from the kept logits
        (:meth:`PrefixCache.first_logits`). Returns how many were admitted."""
        picked = [sequence for sequence in self.waiting[:room] if sequence.kept is not None]
        found = [(sequence, logits) for sequence in self.waiting[:room] if sequence.kept is None
                 and (logits := self.prefixes.first_logits(sequence.prompt, sequence.adapter)) is not None]
        if not picked and not found:
            return 0
        first, caches = len(self.active), [*self.keys, *self.values]
        group = [*picked, *(sequence for sequence, _ in found)]
        for row, sequence in enumerate(group):
            if sequence.kept is not None:  # held since submit, even if the cache has dropped it since
                self.prefixes.touch(sequence.prompt, sequence.adapter)
                for cache, kept in zip(caches, sequence.kept.arrays, strict=True):
                    cache[first + row, :, :len(sequence.prompt)] = kept
            else:
                self.prefixes.load(sequence.prompt, sequence.adapter, len(sequence.prompt), caches, first + row)
            sequence.length = len(sequence.prompt)
        admitted = {id(sequence) for sequence in group}
        self.waiting = [sequence for sequence in self.waiting if id(sequence) not in admitted]
        self.active.extend(group)
        self.kept_admissions += len(group)
        if found:
            self._advance(group[len(picked):], np.stack([logits for _, logits in found]))
        return len(group)

    def _reuse(self) -> list[int]:
        """Positions the first waiting sequence takes from :attr:`prefixes` (none: ``[]``); one that takes any is
        prefilled alone (GroupQueryAttention runs several new positions on a past for one row at a time)."""
        first = self.waiting[0]
        common = self.prefixes.match(first.prompt, first.adapter)
        return [common] if common else []

    def _dropped(self, sequence: Sequence) -> bool:
        if sequence.cancelled.is_set():
            sequence.emit(None, "cancelled")
            return True
        return False

    def _run(self, rows: slice, input_ids: np.ndarray, mask: np.ndarray, last: np.ndarray,
             adapter: str = "") -> np.ndarray:
        """One forward pass on the cache rows ``rows`` (past and present share their buffers); ``last``: each row's
        last position, for a graph with :data:`LAST_POSITIONS`; ``adapter``: whose inputs (:attr:`adapters`).

        Returns:
            A decode step's logits ``[rows, vocab]``; a prefill's as the graph gives them,
            ``[rows, positions, vocab]`` (every position, or the last only).

        A decode step's logits go to a buffer of this module's (reading ONNX Runtime's outputs back
        costs a Python object per output); a prefill's, whose shape the graph decides (every position,
        or the last only), to one ONNX Runtime allocates.
        """
        session = self.session if input_ids.shape[1] == 1 else self.prompt_session
        key = (rows.start, rows.stop, adapter, session is self.session)
        binding = self._bindings.get(key)
        if binding is None:  # the cache's pointers of these rows (and the adapter's inputs), bound once
            binding = self._bindings[key] = session.io_binding()
            for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
                for kind, cache in (("key", keys), ("value", values)):
                    view = cache[rows]
                    pointer, shape = view.ctypes.data, view.shape
                    binding.bind_input(f"past_key_values.{layer}.{kind}", "cpu", 0, np.float32, shape, pointer)
                    binding.bind_output(f"present.{layer}.{kind}", "cpu", 0, np.float32, shape, pointer)
            for name, value in self.adapters.get(adapter, {}).items():
                binding.bind_ortvalue_input(name, value)
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self.last_input:
            binding.bind_cpu_input(LAST_POSITIONS, np.ascontiguousarray(last.reshape(-1, 1), dtype=np.int64))
        self._hand_over()  # the tokens picked since the last run, as this run lets the readers have the interpreter
        start = time.perf_counter()
        if input_ids.shape[1] == 1:
            logits = self._logits.get(input_ids.shape[0])
            if logits is None:  # one buffer per row count, written over by every step of that many rows
                logits = self._logits[input_ids.shape[0]] = np.empty((input_ids.shape[0], 1, self.vocab), np.float32)
            binding.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
            session.run_with_iobinding(binding)
            self.seconds[Phase.DECODE if session is self.session else Phase.PREFILL] += time.perf_counter() - start
            return logits[:, -1, :]
        binding.bind_output("logits", "cpu")
        session.run_with_iobinding(binding)
        self.seconds[Phase.PREFILL] += time.perf_counter() - start
        return binding.get_outputs()[-1].numpy()

    def _prefill(self, group: list[Sequence], reuse: list[int]) -> None:
        """Prefill ``group``'s prompts together on the next free rows (right-padded; see the module docstring), each
        row's first ``reuse`` positions copied from :attr:`prefixes` instead."""
        first, caches = len(self.active), [*self.keys, *self.values]
        lengths = np.asarray([len(s.prompt) for s in group])
        rest = lengths - np.asarray(reuse)
        ids = np.zeros((len(group), int(rest.max())), np.int64)
        for row, (sequence, skip) in enumerate(zip(group, reuse, strict=True)):
            ids[row, :len(sequence.prompt) - skip] = sequence.prompt[skip:]
            if skip:
                self.prefixes.load(sequence.prompt, sequence.adapter, skip, caches, first + row)
        mask = (np.arange(int(lengths.max()))[None, :] < lengths[:, None]).astype(np.int64)
        logits = self._run(slice(first, first + len(group)), ids, mask, rest - 1, group[0].adapter)
        self.prefills += 1
        self.prefilled += int(rest.sum())
        if logits.ndim == 3:  # else one position each (a whole prompt kept but its last): a decode step's logits
            # every position's: each row's own last; or the last position's only
            logits = logits[np.arange(len(group)), rest - 1] if logits.shape[1] > 1 else logits[:, -1]
        for row, sequence in enumerate(group):
            sequence.length = len(sequence.prompt)
            self.prefixes.store(sequence.prompt, sequence.adapter, caches, first + row, logits[row])
        self.active.extend(group)
        self._advance(group, logits)

    def _decode(self) -> None:
        """One decode step of every active sequence."""
        n = len(self.active)
        lengths = np.asarray([s.length for s in self.active])
        total = int(lengths.max()) + 1
        mask = (np.arange(total)[None, :] <= lengths[:, None]).astype(np.int64)
        ids = np.asarray([[s.generated[-1]] for s in self.active], dtype=np.int64)
        logits = self._run(slice(0, n), ids, mask, np.zeros(n, np.int64), self.active[0].adapter)
        for sequence in self.active:
            sequence.length += 1
        self.steps += 1
        if self.on_step is not None:
            self.on_step(n)
        self._advance(list(self.active), logits)

    def _advance(self, sequences: list[Sequence], logits: np.ndarray) -> None:
        """Pick each sequence's next token from its logits row, hand it over, and end finished sequences.

        The tokens are handed over just before the next run (:meth:`_hand_over`): a reader woken by its token does
        not take the interpreter from the engine's thread between runs (it runs while ONNX Runtime does).
        """
        start = time.perf_counter()
        gone = [sequence.cancelled.is_set() for sequence in sequences]  # read once: another thread may cancel
        live = [(row, sequence) for row, (sequence, left) in enumerate(zip(sequences, gone, strict=True)) if not left]
        tokens = pick_rows(live, logits, self.settings.eos_ids)
        for sequence, left in zip(sequences, gone, strict=True):
            if left:
                self._finish(sequence, "cancelled")
        for (_, sequence), token in zip(live, tokens, strict=True):
            reason = take(sequence, token, self.settings.eos_ids, self.capacity)
            self._outbox.append((sequence, token, None))
            if reason is not None:
                self._finish(sequence, reason)
        self.seconds[Phase.PICK] += time.perf_counter() - start

    def _finish(self, sequence: Sequence, reason: str) -> None:
        """End ``sequence`` and give its row to the last active sequence."""
        row, last = self.active.index(sequence), len(self.active) - 1
        if row != last:
            moved = self.active[last]
            for cache in (*self.keys, *self.values):
                cache[row, :, :moved.length] = cache[last, :, :moved.length]
            self.active[row] = moved
        self.active.pop()
        self._outbox.append((sequence, None, reason))

    def _hand_over(self) -> None:
        """Give the tokens and ends picked since the last run to their sequences' ``emit``.

        Called just before the next ONNX Runtime run (and before the thread waits for work): a reader woken by its
        token then takes the interpreter while ONNX Runtime runs without it, not while this thread builds the step.
        """
        start = time.perf_counter()
        outbox, self._outbox = self._outbox, []
        for sequence, token, reason in outbox:
            sequence.emit(token, reason)
        self.seconds[Phase.PICK] += time.perf_counter() - start

