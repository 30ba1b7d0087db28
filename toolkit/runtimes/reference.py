"""transformers as the reference a build is compared with (child process entry point).

:func:`check` runs one worker task that loads the source Hugging Face folder with
transformers in FP32, computes its next-token logits on a few token sequences, frees it,
then loads each ONNX build with ONNX Runtime GenAI and compares its logits on the same ids
(:mod:`slmops.toolkit.domain.parity`). One model is held at a time, so the check's peak is the
larger of the two models, not their sum.

The sequences: the bundled reference text (with the special tokens the tokenizer adds,
e.g. a BOS), cut to :data:`~slmops.toolkit.domain.parity.TEXT_POSITIONS`; and, when the model has
a sliding window shorter than its context, the same text repeated to
:data:`~slmops.toolkit.domain.parity.PAST_WINDOW` tokens past the window, so a window applied to
the wrong layers (or not at all) shows.
"""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slmops.toolkit.core import artifacts, settings, workers
from slmops.toolkit.domain import parity
from slmops.toolkit.domain.prompts import reference_text

_MODULE = "slmops.toolkit.runtimes.reference"
#: Reference logits up to this size are kept on disk for the next build of the same source: a run
#: builds one source up to seven times (FP32, INT8, INT4 and the INT4 recipes), and reading the
#: bundled model's 85 MB back takes 2.7 s of a gate where transformers' pass took 9.5 s.
_CACHE_LIMIT_BYTES = 256 * 2**20
#: The cache's total size; the least recently used references go first.
_CACHE_TOTAL_BYTES = 1024 * 2**20


def _sliding_window(config: object, context: int) -> int:
    """The model's attention window when some layer uses one shorter than the context (0 otherwise)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if layer_types and "sliding_attention" not in layer_types:
        return 0
    if not isinstance(window, int) or window <= 0 or (context and window + 1 >= context):
        return 0
    return window


def sequences(tokenizer: object, config: object, text: str) -> list[tuple[str, list[int]]]:
    """The token sequences a parity check reads: the text, and one past the sliding window when there is one."""
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    limit = context - 1 if context else parity.LONGEST_SEQUENCE
    ids = list(tokenizer(text).input_ids)
    out = [("the reference text", ids[:min(parity.TEXT_POSITIONS, limit)])]
    window = _sliding_window(config, context)
    if window:
        length = min(window + parity.PAST_WINDOW, limit, parity.LONGEST_SEQUENCE)
        if length > window:
            body = list(tokenizer(text, add_special_tokens=False).input_ids)
            prefix = ids[:len(ids) - len(body)] if ids[-len(body):] == body else []
            long_ids = list(prefix)
            while len(long_ids) < length:
                long_ids += body
            out.append((f"past the sliding window of {window}", long_ids[:length]))
    return out


@dataclass(frozen=True)
class ParityJob:
    """What the parity child is asked (the ``parity`` task's payload).

    Attributes:
        source: The Hugging Face folder the builds came from.
        text: The text whose tokens both sides read.
        dtype: What transformers loads the source in (``float32`` or ``bfloat16``).
        fingerprint: The source's content fingerprint ("" keeps no reference on disk).
        candidates: Label to ONNX model folder.
        adapters: Label to the ``.onnx_adapter`` file activated for that candidate (a LoRA kept apart).
    """

    source: str
    text: str
    dtype: str
    fingerprint: str
    candidates: dict[str, str]
    adapters: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The payload as the child reads it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ParityJob:
        """A job as :meth:`to_json` wrote it."""
        return cls(str(data["source"]), str(data["text"]), str(data["dtype"]), str(data.get("fingerprint") or ""),
                   {str(label): str(folder) for label, folder in data["candidates"].items()},
                   {str(label): str(file) for label, file in (data.get("adapters") or {}).items()})


@dataclass(frozen=True)
class ParityResult:
    """What the parity child measured (the ``parity`` task's result).

    Attributes:
        reference: What the reference was (``transformers 4.x (float32)``).
        sequences: ``(what, positions)`` of each sequence compared.
        figures: Label to one :class:`~slmops.toolkit.domain.parity.Figures` per sequence.
        vocab: The reference's vocabulary size (logits per position).
    """

    reference: str
    sequences: tuple[tuple[str, int], ...]
    figures: dict[str, tuple[parity.Figures, ...]]
    vocab: int

    def to_json(self) -> dict:
        """The result as the child sends it."""
        return {"reference": self.reference, "sequences": [[what, positions] for what, positions in self.sequences],
                "figures": {label: [asdict(part) for part in parts] for label, parts in self.figures.items()},
                "vocab": self.vocab}

    @classmethod
    def from_json(cls, data: dict) -> ParityResult:
        """A result as :meth:`to_json` wrote it."""
        return cls(str(data["reference"]), tuple((str(what), int(positions)) for what, positions in data["sequences"]),
                   {str(label): tuple(parity.Figures(**part) for part in parts)
                    for label, parts in data["figures"].items()}, int(data["vocab"]))


def _reference_logits(job: ParityJob, emit) -> tuple[str, list[tuple[str, list[int]]], list]:
    """transformers' logits on the check's sequences: ``(what it was, [(what, ids)], [float32 [T, vocab]])``."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    source = job.source
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    seqs = sequences(tokenizer, getattr(config, "text_config", None) or config, job.text)
    emit({"step": "reference"})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, job.dtype))
    model.eval()
    logits = []
    with torch.no_grad():
        for _what, ids in seqs:
            logits.append(model(torch.tensor([ids])).logits[0].float().numpy())
    del model
    gc.collect()
    return f"transformers {transformers.__version__} ({job.dtype})", seqs, logits


def _cached_reference(job: ParityJob, emit) -> tuple[str, list[tuple[str, list[int]]], list]:
    """:func:`_reference_logits`, kept on disk by the source's fingerprint when small (a run builds one source often).

    The key covers the source's files, the text, the dtype and the installed transformers
    version, so a cached reference is the one transformers would compute again.
    """
    import hashlib
    import importlib.metadata
    import json

    import numpy as np

    key = job.fingerprint
    if not key:
        return _reference_logits(job, emit)
    blob = json.dumps([key, job.text, job.dtype, parity.TEXT_POSITIONS, parity.PAST_WINDOW,
                       importlib.metadata.version("transformers")])
    file = settings.home() / "cache" / "parity" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.npz"
    if file.is_file():
        file.touch()  # recently used: pruned last
        with np.load(file, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            seqs = [(what, saved[f"ids{i}"].tolist()) for i, what in enumerate(meta["what"])]
            return meta["reference"], seqs, [saved[f"logits{i}"] for i in range(len(seqs))]
    reference, seqs, logits = _reference_logits(job, emit)
    if sum(array.nbytes for array in logits) <= _CACHE_LIMIT_BYTES:
        arrays = {f"logits{i}": array for i, array in enumerate(logits)}
        arrays |= {f"ids{i}": np.asarray(ids, dtype=np.int64) for i, (_what, ids) in enumerate(seqs)}
        meta = json.dumps({"reference": reference, "what": [what for what, _ in seqs]})
        file.parent.mkdir(parents=True, exist_ok=True)
        with artifacts.atomic_path(file) as partial, partial.open("wb") as handle:
            np.savez(handle, meta=np.asarray(meta), **arrays)
        artifacts.prune_least_recent(file.parent, "*.npz", _CACHE_TOTAL_BYTES)
    return reference, seqs, logits


def _parity_task(payload: dict, emit) -> dict:
    """Worker task: reference logits from transformers, then each candidate's figures on the same ids (a :class:`ParityJob`)."""
    import numpy as np
    import onnxruntime_genai as og

    from slmops.toolkit.runtimes.genai import logits_for_ids

    job = ParityJob.from_json(payload)
    reference_name, seqs, reference = _cached_reference(job, emit)
    results = {}
    for label, folder in job.candidates.items():
        emit({"step": label})
        onnx_model = og.Model(str(folder))
        adapter = job.adapters.get(label)
        parts = [parity.figures(ref, logits_for_ids(onnx_model, ids, adapter))
                 for ref, (_what, ids) in zip(reference, seqs)]
        del onnx_model
        gc.collect()
        results[label] = tuple(parts)
    return ParityResult(reference_name, tuple((what, len(ids)) for what, ids in seqs), results,
                        int(np.asarray(reference[0]).shape[-1])).to_json()


def check(source: str | os.PathLike[str], candidates: dict[str, str | os.PathLike[str]], *,
          log_path: Path | None = None, text: str | None = None, dtype: str = "float32",
          fingerprint: str = "", adapters: dict[str, str | os.PathLike[str]] | None = None,
          ) -> tuple[workers.ChildRun, ParityResult]:
    """Compare each candidate build with transformers' forward pass of ``source``, in one child process.

    Args:
        source: The Hugging Face folder the builds came from (a merged fine-tune for an adapter).
        candidates: Label (``fp32``, ``int4``, ...) to ONNX model folder.
        log_path: The child's log (kept with the conversion's logs).
        text: Text to read; the bundled reference text by default.
        dtype: What transformers loads the source in (``float32``; ``bfloat16`` for a source
            whose FP32 copy would not fit in memory).
        fingerprint: The source's content fingerprint; when given, a small reference is kept
            on disk under ``<home>/cache/parity`` and reused for the next build of the same source.
        adapters: Label to the ``.onnx_adapter`` file activated when that candidate runs (a
            build whose LoRA was kept apart, compared with ``source``, the merged fine-tune).

    Returns:
        ``(run, result)``: the child's cost, and what it measured (:class:`ParityResult`).

    Raises:
        ToolFailedError: transformers or ONNX Runtime GenAI could not load or run a model.
    """
    job = ParityJob(str(source), text or reference_text(), dtype, fingerprint,
                    {label: str(Path(folder).resolve()) for label, folder in candidates.items()},
                    {label: str(Path(file).resolve()) for label, file in (adapters or {}).items()})
    run = workers.run_worker(_MODULE, "parity", job.to_json(), name="parity check against transformers",
                             log_path=log_path, idle_timeout=1800)
    return run, ParityResult.from_json(run.result)


def judged(result: ParityResult, label: str, tolerance: parity.Tolerance) -> parity.ParityCheck:
    """The :class:`~slmops.toolkit.domain.parity.ParityCheck` of one candidate of a :func:`check` result."""
    return parity.judge(label, result.reference, list(result.sequences), list(result.figures[label]), tolerance)


if __name__ == "__main__":
    workers.serve({"parity": _parity_task})
