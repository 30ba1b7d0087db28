"""The parity check's candidates: one build's logits on the reference's token ids, compared with the reference's.

The delivered build runs in ONNX Runtime GenAI, as it will be served. The FP32 model a quantizer
started from (never delivered) runs in ONNX Runtime itself with its weights memory-mapped as
written (no prepacked copies, no folded transposes): GenAI cannot turn prepacking off, which
doubles an FP32 model. The build is freed before the reference's logits are read back.
"""

from __future__ import annotations

import gc
from pathlib import Path

from slmops.toolkit.core import codec
from slmops.toolkit.domain import parity
from slmops.toolkit.runtimes.reference_jobs import CandidateFigures, CandidateJob
from slmops.toolkit.runtimes.reference_model import read_reference


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


def candidate_task(payload: dict, emit) -> dict:
    """Worker task: one candidate's figures against the reference file (a :class:`CandidateJob`)."""
    import numpy as np

    job = codec.load(CandidateJob, payload)
    _reference, seqs, _vocab = read_reference(Path(job.reference))
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
            parts.append(parity.figures(saved[f"logits{i}"], got[i]))
            got[i] = None
    return codec.dump(CandidateFigures(tuple(parts), runtime))


