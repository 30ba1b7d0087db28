"""transformers as the reference a build is compared with (child process entry point).

:func:`check` runs one child per phase, each gone before the next starts, so the check's
peak is its largest phase, not their sum:

* the reference (:mod:`slmops.toolkit.runtimes.reference_model`): transformers computes the
  source's next-token logits in FP32 on a few token sequences and writes them to disk; a small
  reference is kept under ``<home>/cache/parity`` for the next build of the same source;
* each candidate (:mod:`slmops.toolkit.runtimes.reference_candidate`): the build reads the same
  ids, its logits are kept and the model freed before the reference's are read back and compared
  (:mod:`slmops.toolkit.domain.parity`).

What the children are asked and answer is in :mod:`slmops.toolkit.runtimes.reference_jobs`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, settings, workers
from slmops.toolkit.domain import parity
from slmops.toolkit.domain.prompts import reference_text
from slmops.toolkit.runtimes.reference_candidate import candidate_task
from slmops.toolkit.runtimes.reference_jobs import (
    CandidateFigures,
    CandidateJob,
    ParityJob,
    ParityResult,
    ReferenceTask,
)
from slmops.toolkit.runtimes.reference_model import read_reference, reference_task

_MODULE = "slmops.toolkit.runtimes.reference"
#: Reference logits up to this size are kept on disk for the next build of the same source: a run
#: builds one source up to seven times (FP32, INT8, INT4 and the INT4 recipes), and reading the
#: bundled model's 85 MB back takes 2.7 s of a gate where transformers' pass took 9.5 s.
_CACHE_LIMIT_BYTES = 256 * 2**20
#: The cache's total size; the least recently used references go first.
_CACHE_TOTAL_BYTES = 1024 * 2**20


def _cache_file(job: ParityJob) -> Path | None:
    """Where the reference of ``job`` is kept on disk (None: no fingerprint, nothing kept).

    The key covers the source's files, the text, the dtype and the installed transformers
    version, so a cached reference is the one transformers would compute again.
    """
    import hashlib
    import importlib.metadata
    import json

    if not job.fingerprint:
        return None
    blob = json.dumps([job.fingerprint, job.text, job.dtype, parity.TEXT_POSITIONS, parity.PAST_WINDOW,
                       importlib.metadata.version("transformers")])
    return settings.home() / "cache" / "parity" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.npz"


@contextmanager
def _reference_file(job: ParityJob) -> Iterator[tuple[Path, bool]]:
    """``(file, cached)``: the reference's file, kept under ``<home>/cache/parity`` when small, else scratch."""
    cached = _cache_file(job)
    if cached is not None and cached.is_file():
        cached.touch()  # recently used: pruned last
        yield cached, True
        return
    root = settings.home() / "cache" / "parity"
    artifacts.remove_stale(root)
    scratch = artifacts.staging_dir(root / "reference", "working")
    try:
        yield scratch / "reference.npz", False
        file = scratch / "reference.npz"
        if cached is not None and file.is_file() and file.stat().st_size <= _CACHE_LIMIT_BYTES + 2**20:
            os.replace(file, cached)
            artifacts.prune_least_recent(root, "*.npz", _CACHE_TOTAL_BYTES)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check(source: str | os.PathLike[str], candidates: dict[str, str | os.PathLike[str]], *,
          log_path: Path | None = None, text: str | None = None, dtype: str = "float32",
          fingerprint: str = "", adapters: dict[str, str | os.PathLike[str]] | None = None,
          lean: tuple[str, ...] = ()) -> tuple[workers.ChildRun, ParityResult]:
    """Compare each candidate build with transformers' forward pass of ``source``, one child per phase.

    Args:
        source: The Hugging Face folder the builds came from (a merged fine-tune for an adapter).
        candidates: Label (``fp32``, ``int4``, ...) to ONNX model folder.
        log_path: The reference child's log (kept with the conversion's logs); each candidate's
            beside it, named ``<stem>-<label>``.
        text: Text to read; the bundled reference text by default.
        dtype: What transformers computes in (``float32``, from a 16-bit checkpoint as stored;
            ``bfloat16`` for a source whose 16-bit copy alone would not fit in memory).
        fingerprint: The source's content fingerprint; when given, a small reference is kept
            on disk under ``<home>/cache/parity`` and reused for the next build of the same source.
        adapters: Label to the ``.onnx_adapter`` file activated when that candidate runs (a
            build whose LoRA was kept apart, compared with ``source``, the merged fine-tune).
        lean: Labels of candidates that are not delivered (the FP32 model a quantizer started
            from): run in ONNX Runtime itself with weights as written, not in GenAI.

    Returns:
        ``(run, result)``: the check's cost (wall time of all its children, the largest peak;
        ``result.steps`` has each child's), and what it measured (:class:`ParityResult`).

    Raises:
        ToolFailedError: transformers or ONNX Runtime could not load or run a model.
    """
    job = ParityJob(str(source), text or reference_text(), dtype, fingerprint,
                    {label: str(Path(folder).resolve()) for label, folder in candidates.items()},
                    {label: str(Path(file).resolve()) for label, file in (adapters or {}).items()})
    runs: list[tuple[str, workers.ChildRun]] = []

    def log_of(label: str) -> Path | None:
        return None if log_path is None else log_path.with_name(f"{log_path.stem}-{label}{log_path.suffix}")

    with _reference_file(job) as (file, cached):
        if not cached:
            runs.append(("reference (transformers)", workers.run_worker(
                _MODULE, "reference", codec.dump(ReferenceTask(job, str(file))),
                name="parity check's reference (transformers)", log_path=log_path, idle_timeout=1800)))
        reference, seqs, vocab = read_reference(file)
        figures = {}
        for label, folder in job.candidates.items():
            run = workers.run_worker(_MODULE, "candidate",
                                     codec.dump(CandidateJob(label, folder, job.adapters.get(label, ""), str(file),
                                                             label in lean)),
                                     name=f"parity check of {label} against transformers", log_path=log_of(label),
                                     idle_timeout=1800)
            answer = codec.load(CandidateFigures, run.result)
            figures[label] = answer.figures
            runs.append((f"{label} ({answer.runtime})", run))
    steps = {what: round(run.peak_rss_mib, 1) for what, run in runs}
    total = workers.ChildRun(runs[-1][1].command, sum(run.wall_s for _what, run in runs),
                             max(run.peak_rss_mib for _what, run in runs), runs[-1][1].log_path)
    return total, ParityResult(reference, tuple((what, len(ids)) for what, ids in seqs), figures, vocab, steps)


def judged(result: ParityResult, label: str, tolerance: parity.Tolerance) -> parity.ParityCheck:
    """The :class:`~slmops.toolkit.domain.parity.ParityCheck` of one candidate of a :func:`check` result."""
    return parity.judge(label, result.reference, list(result.sequences), list(result.figures[label]), tolerance)


if __name__ == "__main__":
    workers.serve({"reference": reference_task, "candidate": candidate_task})
