"""transformers as the reference a build is compared with (child process entry point).

:func:`check` runs one child per phase, each gone before the next starts, so the check's
peak is its largest phase, not their sum:

* the reference: transformers loads the source as stored (bf16 or fp16, a 0.5B checkpoint's
  1 GB rather than its 2 GB FP32 copy) and computes in FP32 all the same: each module's weights
  are upcast while it runs and put back after (a 16-bit value is exact in FP32, so the logits
  are those of the model loaded in FP32). Its next-token logits on a few token sequences go to
  disk;
* each candidate: the build reads the same ids, its logits are kept and the model freed
  before the reference's are read back and compared (:mod:`slmops.toolkit.domain.parity`).
  The delivered build runs in ONNX Runtime GenAI, as it will be served. The FP32 model a
  quantizer started from (never delivered) runs in ONNX Runtime itself with its weights
  memory-mapped as written (no prepacked copies, no folded transposes): GenAI cannot turn
  prepacking off, which doubles an FP32 model.

The sequences: the bundled reference text (with the special tokens the tokenizer adds,
e.g. a BOS), cut to :data:`~slmops.toolkit.domain.parity.TEXT_POSITIONS`; and, when the model has
a sliding window shorter than its context, the same text repeated to
:data:`~slmops.toolkit.domain.parity.PAST_WINDOW` tokens past the window, so a window applied to
the wrong layers (or not at all) shows.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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
        steps: Each child's peak resident memory in MiB, by what it ran (``reference
            (transformers)``, ``int4 (onnxruntime-genai)``...); a reference read from the cache has none.
    """

    reference: str
    sequences: tuple[tuple[str, int], ...]
    figures: dict[str, tuple[parity.Figures, ...]]
    vocab: int
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The result as the child sends it."""
        return {"reference": self.reference, "sequences": [[what, positions] for what, positions in self.sequences],
                "figures": {label: [asdict(part) for part in parts] for label, parts in self.figures.items()},
                "vocab": self.vocab, "steps": dict(self.steps)}

    @classmethod
    def from_json(cls, data: dict) -> ParityResult:
        """A result as :meth:`to_json` wrote it."""
        return cls(str(data["reference"]), tuple((str(what), int(positions)) for what, positions in data["sequences"]),
                   {str(label): tuple(parity.Figures(**part) for part in parts)
                    for label, parts in data["figures"].items()}, int(data["vocab"]),
                   {str(what): float(mib) for what, mib in (data.get("steps") or {}).items()})


@dataclass(frozen=True)
class CandidateJob:
    """One build to compare with the reference on disk (the ``candidate`` task's payload).

    Attributes:
        label: What it is (``fp32``, ``int4``...).
        folder: Its ONNX model folder.
        adapter: The ``.onnx_adapter`` file activated while it runs ("" for none).
        reference: The reference's file (sequences and logits, written by the ``reference`` task).
        lean: Run in ONNX Runtime itself with weights as written (a build that is not delivered).
    """

    label: str
    folder: str
    adapter: str
    reference: str
    lean: bool = False

    def to_json(self) -> dict:
        """The payload as the child reads it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CandidateJob:
        """A job as :meth:`to_json` wrote it."""
        return cls(str(data["label"]), str(data["folder"]), str(data["adapter"]), str(data["reference"]),
                   bool(data["lean"]))


def _float32_while_running(model: object, torch: object) -> None:
    """Hooks that give each module its own floating weights and buffers in FP32 while it runs, and back after.

    A module's forward then computes in FP32 what it would with the model loaded in FP32 (a 16-bit
    value is exact in FP32), while the model rests in memory as stored: the stored tensor is put
    back, not a copy. A plain embedding table is not upcast: the rows it gathers are (the same
    values). Tied weights are one tensor: cast where used, put back before the next module.
    """
    def own(module: object):
        for table in (module._parameters, module._buffers):
            for tensor in table.values():
                if tensor is not None and tensor.is_floating_point():
                    yield tensor

    def up(module: object, _args: object) -> None:
        module._slmops_stored = [(tensor, tensor.data) for tensor in own(module)]
        for tensor, stored in module._slmops_stored:
            tensor.data = stored.float()

    def down(module: object, _args: object, _output: object) -> None:
        for tensor, stored in module.__dict__.pop("_slmops_stored", []):
            tensor.data = stored

    def gathered(_module: object, _args: object, output: object) -> object:
        return output.float()

    for module in model.modules():
        if not any(tensor.dtype != torch.float32 for tensor in own(module)):
            continue
        if type(module) is torch.nn.Embedding:
            module.register_forward_hook(gathered)
        else:
            module.register_forward_pre_hook(up)
            module.register_forward_hook(down)


def _init_buffers_in_float32(model: object, config: object, torch: object) -> None:
    """Give ``model`` the FP32 values of the buffers a model computes when made (RoPE frequencies, scales).

    Those are not in the checkpoint: a model made in 16 bits computed them in 16 bits, which no
    upcast restores. They are computed again in a copy made in FP32 with its weights left unallocated.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    made = dict(skeleton.named_buffers())
    for name, buffer in list(model.named_buffers()):
        fresh = made.get(name)
        if fresh is not None and buffer.is_floating_point() and fresh.dtype == torch.float32 and fresh.shape == buffer.shape:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = fresh
    del skeleton


def _reference_logits(job: ParityJob, emit) -> tuple[str, list[tuple[str, list[int]]], list]:
    """transformers' logits on the check's sequences: ``(what it was, [(what, ids)], [float32 [T, vocab]])``.

    For ``float32`` a 16-bit checkpoint is loaded as stored and computed in FP32 module by module
    (:func:`_float32_while_running`), the same logits as loading it in FP32 for half the memory.
    """
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
    as_stored = job.dtype == "float32"
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto" if as_stored else getattr(torch, job.dtype))
    model.eval()
    if as_stored and any(p.dtype != torch.float32 for p in model.parameters()):
        _init_buffers_in_float32(model, config, torch)
        _float32_while_running(model, torch)
    logits = []
    with torch.no_grad():
        for _what, ids in seqs:
            logits.append(model(torch.tensor([ids])).logits[0].float().numpy())
    del model
    gc.collect()
    return f"transformers {transformers.__version__} ({job.dtype})", seqs, logits


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


def _reference_task(payload: dict, emit) -> dict:
    """Worker task: transformers' logits on the check's sequences, written to ``payload["out"]`` (a :class:`ParityJob`)."""
    import json

    import numpy as np

    job = ParityJob.from_json(payload["job"])
    reference, seqs, logits = _reference_logits(job, emit)
    arrays = {f"logits{i}": array for i, array in enumerate(logits)}
    arrays |= {f"ids{i}": np.asarray(ids, dtype=np.int64) for i, (_what, ids) in enumerate(seqs)}
    meta = json.dumps({"reference": reference, "what": [what for what, _ in seqs]})
    with artifacts.atomic_path(payload["out"]) as partial, partial.open("wb") as handle:
        np.savez(handle, meta=np.asarray(meta), **arrays)
    return {"bytes": sum(array.nbytes for array in logits)}


def _read_reference(file: Path) -> tuple[str, list[tuple[str, list[int]]], int]:
    """``(what the reference was, [(what, ids)], vocabulary)`` of a reference file (its logits stay on disk)."""
    import json

    import numpy as np

    with np.load(file, allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
        seqs = [(what, saved[f"ids{i}"].tolist()) for i, what in enumerate(meta["what"])]
        with saved.zip.open("logits0.npy") as member:  # its header: the array stays on disk
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            vocab = int(read(member)[0][-1])
    return meta["reference"], seqs, vocab


def _lean_logits(folder: str, ids: list[int]) -> object | None:
    """The FP32 model's logits in ONNX Runtime itself, weights as written (None: inputs it does not know).

    Prepacking off (no packed copy of every weight), constant folding off (a tied table's
    transpose is made while it runs, not kept), no arena, and the logits written straight into
    the returned array. Inputs are those GenAI feeds a first prompt: the ids, an all-ones
    attention mask, positions from 0 and empty past keys and values.
    """
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=["ConstantFolding"])
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
             "tensor(float16)": np.float16}
    length = len(ids)
    binding = session.io_binding()
    for given in session.get_inputs():
        kind = types.get(given.type)
        if kind is None:
            return None
        if given.name == "input_ids":
            value = np.asarray([ids], dtype=kind)
        elif given.name == "attention_mask":
            value = np.ones((1, length), dtype=kind)
        elif given.name == "position_ids":
            value = np.arange(length, dtype=kind)[None]
        elif given.name.startswith("past_key_values."):
            value = np.zeros([dim if isinstance(dim, int) else 1 if i == 0 else 0
                              for i, dim in enumerate(given.shape)], dtype=kind)
        else:
            return None
        binding.bind_cpu_input(given.name, value)
    outputs = {out.name: out for out in session.get_outputs()}
    vocab = outputs["logits"].shape[-1] if "logits" in outputs else None
    if not isinstance(vocab, int) or outputs["logits"].type != "tensor(float)":
        return None
    logits = np.empty((1, length, vocab), dtype=np.float32)
    binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
    for name in outputs:
        if name != "logits":
            binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    del binding, session
    return logits[0]


def _candidate_task(payload: dict, emit) -> dict:
    """Worker task: one candidate's figures against the reference file (a :class:`CandidateJob`)."""
    import numpy as np

    job = CandidateJob.from_json(payload)
    _reference, seqs, _vocab = _read_reference(Path(job.reference))
    emit({"step": job.label})
    got = [_lean_logits(job.folder, ids) for _what, ids in seqs] if job.lean and not job.adapter else []
    runtime = "onnxruntime"
    if not got or any(logits is None for logits in got):
        import onnxruntime_genai as og

        from slmops.toolkit.runtimes.genai import logits_for_ids

        runtime = "onnxruntime-genai"
        onnx_model = og.Model(str(job.folder))
        got = [logits_for_ids(onnx_model, ids, job.adapter or None) for _what, ids in seqs]
        del onnx_model
    gc.collect()  # the build is gone before the reference's logits are read back
    parts = []
    with np.load(job.reference, allow_pickle=False) as saved:
        for i in range(len(seqs)):
            parts.append(asdict(parity.figures(saved[f"logits{i}"], got[i])))
            got[i] = None
    return {"figures": parts, "runtime": runtime}


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
                _MODULE, "reference", {"job": job.to_json(), "out": str(file)},
                name="parity check's reference (transformers)", log_path=log_path, idle_timeout=1800)))
        reference, seqs, vocab = _read_reference(file)
        figures = {}
        for label, folder in job.candidates.items():
            run = workers.run_worker(_MODULE, "candidate",
                                     CandidateJob(label, folder, job.adapters.get(label, ""), str(file),
                                                  label in lean).to_json(),
                                     name=f"parity check of {label} against transformers", log_path=log_of(label),
                                     idle_timeout=1800)
            figures[label] = tuple(parity.Figures(**part) for part in run.result["figures"])
            runs.append((f"{label} ({run.result['runtime']})", run))
    steps = {what: round(run.peak_rss_mib, 1) for what, run in runs}
    total = workers.ChildRun(runs[-1][1].command, sum(run.wall_s for _what, run in runs),
                             max(run.peak_rss_mib for _what, run in runs), runs[-1][1].log_path)
    return total, ParityResult(reference, tuple((what, len(ids)) for what, ids in seqs), figures, vocab, steps)


def judged(result: ParityResult, label: str, tolerance: parity.Tolerance) -> parity.ParityCheck:
    """The :class:`~slmops.toolkit.domain.parity.ParityCheck` of one candidate of a :func:`check` result."""
    return parity.judge(label, result.reference, list(result.sequences), list(result.figures[label]), tolerance)


if __name__ == "__main__":
    workers.serve({"reference": _reference_task, "candidate": _candidate_task})
