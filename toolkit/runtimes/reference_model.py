"""The parity check's reference: transformers' next-token logits on the check's token sequences.

transformers loads the source as stored (bf16 or fp16, a 0.5B checkpoint's 1 GB rather than its
2 GB FP32 copy) and computes in FP32 all the same: each module's weights are upcast while it runs
and put back after (a 16-bit value is exact in FP32, so the logits are those of the model loaded in
FP32). The ``reference`` task (run in a child by :mod:`slmops.toolkit.runtimes.reference`) writes
the logits to a file that each candidate's child then reads.

The sequences: the bundled reference text (with the special tokens the tokenizer adds, e.g. a BOS),
cut to :data:`~slmops.toolkit.domain.parity.TEXT_POSITIONS`; and, when the model has a sliding
window shorter than its context, the same text repeated to
:data:`~slmops.toolkit.domain.parity.PAST_WINDOW` tokens past the window, so a window applied to
the wrong layers (or not at all) shows.
"""

from __future__ import annotations

import gc
from pathlib import Path

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.domain import parity
from slmops.toolkit.runtimes.reference_jobs import ParityJob, ReferenceMeta, ReferenceTask, ReferenceWritten


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


def reference_logits(job: ParityJob, emit) -> tuple[str, list[tuple[str, list[int]]], list]:
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


def reference_task(payload: dict, emit) -> dict:
    """Worker task: transformers' logits on the check's sequences, written to the task's file (a :class:`ReferenceTask`)."""
    import json

    import numpy as np

    task = codec.load(ReferenceTask, payload)
    reference, seqs, logits = reference_logits(task.job, emit)
    arrays = {f"logits{i}": array for i, array in enumerate(logits)}
    arrays |= {f"ids{i}": np.asarray(ids, dtype=np.int64) for i, (_what, ids) in enumerate(seqs)}
    meta = json.dumps(codec.dump(ReferenceMeta(reference, tuple(what for what, _ in seqs))))
    with artifacts.atomic_path(task.out) as partial, partial.open("wb") as handle:
        np.savez(handle, meta=np.asarray(meta), **arrays)
    return codec.dump(ReferenceWritten(sum(array.nbytes for array in logits)))


def read_reference(file: Path) -> tuple[str, list[tuple[str, list[int]]], int]:
    """``(what the reference was, [(what, ids)], vocabulary)`` of a reference file (its logits stay on disk)."""
    import json

    import numpy as np

    with np.load(file, allow_pickle=False) as saved:
        meta = codec.load(ReferenceMeta, json.loads(str(saved["meta"])), kind=f"reference file {file}")
        seqs = [(what, saved[f"ids{i}"].tolist()) for i, what in enumerate(meta.what)]
        with saved.zip.open("logits0.npy") as member:  # its header: the array stays on disk
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            vocab = int(read(member)[0][-1])
    return meta.reference, seqs, vocab


