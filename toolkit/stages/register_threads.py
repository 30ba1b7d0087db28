"""``--threads auto``: probe a registered model's decode speed at each intra-op thread count and pick one.

The probe is kept per compute graph and machine, so the choice is the same run to run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import codec, settings, system
from slmops.toolkit.domain.prompts import prompt_text
from slmops.toolkit.domain.results.registration import (
    ThreadSpeed,
)
from slmops.toolkit.runtimes import genai

AUTO_THREADS = "auto"


PROBE_PROMPT_TOKENS = 128  # the prompt of the thread probe (shorter on a model with a small context)


@dataclass(frozen=True)
class ThreadChoice:
    """What ``--threads auto`` measured and chose.

    Attributes:
        chosen: The thread count written to ``genai_config.json``.
        probe: Each count tried (0: the runtime's default), its decode speed and time to first token.
        reused: The probe was measured earlier on the same compute graph on this machine (see
            :func:`choose_threads`) and read back rather than run again.
    """

    chosen: int
    probe: tuple[ThreadSpeed, ...]
    reused: bool = False

    @property
    def speedup(self) -> float:
        """Decode speed of the chosen count over the runtime's default (1.0 when the default was not probed)."""
        by_count = {row.threads: row.decode_tps for row in self.probe}
        return round(by_count[self.chosen] / by_count[0], 3) if by_count.get(0) else 1.0


def probe_counts(cpus: int | None = None) -> list[int]:
    """The thread counts ``--threads auto`` tries: the runtime's default (0), 1, powers of two, and every CPU.

    Example:
        >>> probe_counts(2), probe_counts(12)
        ([0, 1, 2], [0, 1, 2, 4, 8, 12])
    """
    cpus = cpus or os.cpu_count() or 1
    counts = [0, 1]
    while counts[-1] * 2 < cpus:
        counts.append(counts[-1] * 2)
    return sorted({*counts, cpus})


def pick_threads(probe: Sequence[ThreadSpeed]) -> int:
    """The fastest decoding count of a probe (ties go to the shorter time to first token), never the default (0).

    An explicit count keeps the choice the same wherever the runtime's default would differ.

    Example:
        >>> pick_threads([ThreadSpeed(0, 181, 227), ThreadSpeed(1, 180, 226), ThreadSpeed(2, 238, 164)])
        2
    """
    explicit = [row for row in probe if row.threads > 0]
    return max(explicit, key=lambda row: (row.decode_tps, -row.ttft_ms)).threads


@dataclass(frozen=True)
class KeptProbe:
    """A thread probe kept for a compute graph on this machine (``<home>/cache/threads/KEY.json``).

    Attributes:
        probe: Each count tried.
    """

    probe: tuple[ThreadSpeed, ...] = ()


def choose_threads(folder: Path, context_length: int) -> ThreadChoice:
    """Probe ``folder`` (a complete model folder) at each count of :func:`probe_counts` and pick one."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    length = max(8, min(PROBE_PROMPT_TOKENS, (context_length or 4 * PROBE_PROMPT_TOKENS) // 4))
    ids = tokenizer.encode(prompt_text(tokenizer, length), add_special_tokens=False).ids
    counts = probe_counts()
    # The fastest count depends on the compute graph and the machine, not on the weights' values: a
    # fine-tune and its base at one precision share a graph (model.onnx holds it; the weights sit in
    # model.onnx.data), so a probe is kept by the graph's hash and reused, which also keeps the choice
    # the same run to run. Every graph counts: a pipeline's prompt graph beside model.onnx changes the timing.
    graphs = [(graph.name, hashlib.sha256(graph.read_bytes()).hexdigest()) for graph in sorted(folder.glob("*.onnx"))]
    key = hashlib.sha256(json.dumps([graphs, len(ids), counts, system.cpu_model(), os.cpu_count(),
                                     importlib.metadata.version("onnxruntime-genai")]).encode()).hexdigest()[:20]
    kept = settings.home() / "cache" / "threads" / f"{key}.json"
    if kept.is_file():
        probe = codec.read(KeptProbe, kept).probe
        if probe:
            return ThreadChoice(pick_threads(probe), probe, reused=True)
    probe = tuple(genai.probe_threads(folder, ids, counts))
    kept.parent.mkdir(parents=True, exist_ok=True)
    codec.write(kept, KeptProbe(probe))
    return ThreadChoice(pick_threads(probe), probe)

