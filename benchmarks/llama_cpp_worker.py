"""The llama.cpp side of ``benchmarks/llama_cpp.py``: run by the llama.cpp venv's Python, never by the project's.

Reads one JSON request a line on stdin and answers one JSON line on stdout (llama.cpp's own
logging goes to stderr). Imports only ``llama_cpp`` (``llama-cpp-python``), NumPy and the standard
library. Requests:

* ``{"cmd": "quantize", "src": F32_GGUF, "dst": GGUF, "ftype": "Q4_K_M", "threads": 2}``: llama.cpp's
  quantizer (``llama_model_quantize``, what the ``llama-quantize`` tool calls) with its defaults.
* ``{"cmd": "logits", "model": GGUF, "ids": [...], "out": NPY, "threads": 2}``: the next-token
  logits at every position of ``ids`` (one prompt pass, ``logits_all``), saved as float32 ``[T, vocab]``.
* ``{"cmd": "load", "name": LABEL, "model": GGUF, "threads": 2, "n_ctx": 512}``: keep a model loaded.
* ``{"cmd": "time", "name": LABEL, "ids": [...], "gen": 128}``: one timed greedy generation of
  exactly ``gen`` tokens (end of sequence ignored) after ``ids``, the method of the project's
  ``genai.time_generation``: the first token's time covers the prompt pass and choosing the
  token; each later token is one model step.
* ``{"cmd": "probe", "model": GGUF}``: eight tokens through the model (a crash ends this process).
* ``{"cmd": "info"}``: the versions and the system info llama.cpp reports.

``SLMOPS_LLAMA_EXTRA_BUFTS=0`` loads models without llama.cpp's extra weight buffers (``use_extra_bufts``:
the repacked and AMX layouts), for builds whose kernels for them crash on the machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time

import numpy as np


def _import_llama_cpp():
    """The ``llama_cpp`` package, not ``benchmarks/llama_cpp.py`` beside this script (the script's folder leads sys.path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import llama_cpp
    import llama_cpp.llama_cpp

    return llama_cpp


llama_cpp = _import_llama_cpp()
MODELS: dict = {}
_DEFAULT_MODEL_PARAMS = llama_cpp.llama_model_default_params
#: llama.cpp's extra weight buffers (repacked and AMX layouts); the parent may turn them off where they crash.
EXTRA_BUFTS = os.environ.get("SLMOPS_LLAMA_EXTRA_BUFTS", "1") != "0"


def _model_params():
    params = _DEFAULT_MODEL_PARAMS()
    params.use_extra_bufts = EXTRA_BUFTS
    return params


# What llama_cpp.Llama calls: the function of the llama_cpp.llama_cpp module (the package re-exports it).
llama_cpp.llama_cpp.llama_model_default_params = llama_cpp.llama_model_default_params = _model_params


def _ftype(name: str) -> int:
    return {"F32": llama_cpp.LLAMA_FTYPE_ALL_F32, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}.get(
        name.upper(), None) or getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}")


def quantize(job: dict) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _ftype(job["ftype"])
    params.nthread = int(job.get("threads", 2))
    start = time.perf_counter()
    status = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize returned {status} for {job['ftype']}")
    return {"seconds": round(time.perf_counter() - start, 2)}


def logits(job: dict) -> dict:
    ids = [int(i) for i in job["ids"]]
    llm = llama_cpp.Llama(model_path=job["model"], n_ctx=len(ids) + 16, n_batch=len(ids), n_ubatch=len(ids),
                          logits_all=True, n_threads=int(job.get("threads", 2)),
                          n_threads_batch=int(job.get("threads", 2)), verbose=False)
    llm.eval(ids)
    out = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    np.save(job["out"], out)
    return {"tokens": len(ids), "vocab": int(out.shape[1]), "parameters": int(llm._model.n_params())}


def load(job: dict) -> dict:
    threads = int(job.get("threads", 2))
    start = time.perf_counter()
    MODELS[job["name"]] = llama_cpp.Llama(model_path=job["model"], n_ctx=int(job.get("n_ctx", 512)), n_batch=512,
                                          logits_all=False, n_threads=threads, n_threads_batch=threads,
                                          verbose=False)
    return {"load_s": round(time.perf_counter() - start, 3)}


def _greedy(llm) -> int:
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
    return int(row.argmax())


def timed(job: dict) -> dict:
    llm = MODELS[job["name"]]
    ids, gen = [int(i) for i in job["ids"]], int(job["gen"])
    llm.reset()
    begin = time.perf_counter()
    llm.eval(ids)
    token = _greedy(llm)
    first = time.perf_counter()
    produced = 1
    while produced < gen:
        llm.eval([token])
        token = _greedy(llm)
        produced += 1
    end = time.perf_counter()
    return {"ttft_s": first - begin, "total_s": end - begin, "gen_tokens": produced}


def probe(job: dict) -> dict:
    """A few tokens through ``job["model"]``: where llama.cpp's kernels crash, this process dies and the parent sees it."""
    llm = llama_cpp.Llama(model_path=job["model"], n_ctx=64, n_threads=int(job.get("threads", 2)), verbose=False)
    llm.eval(list(range(1, 9)))
    return {"extra_bufts": EXTRA_BUFTS}


def info(_job: dict) -> dict:
    return {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"), "extra_bufts": EXTRA_BUFTS,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


HANDLERS = {"quantize": quantize, "logits": logits, "load": load, "time": timed, "info": info, "probe": probe}


def main() -> None:
    # Answers go out on a private copy of stdout; anything native code prints goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            answer = {"ok": True, "result": HANDLERS[job["cmd"]](job)}
        except Exception as error:  # noqa: BLE001 (reported to the parent, which raises it)
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
