"""The llama.cpp side of ``benchmarks/llama_cpp.py``: run by the llama.cpp venv's Python, never by the project's.

Reads one JSON request a line on stdin and answers one JSON line on stdout (llama.cpp's own
logging goes to stderr). Imports only ``llama_cpp`` (``llama-cpp-python``), NumPy and the standard
library. Requests:

* ``{"cmd": "logits", "model": GGUF, "ids": [...], "out": NPY, "threads": 2}``: the next-token
  logits at every position of ``ids`` (one prompt pass, ``logits_all``), saved as float32 ``[T, vocab]``.
* ``{"cmd": "info"}``: the versions and the system info llama.cpp reports.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys

import numpy as np


def _import_llama_cpp():
    """The ``llama_cpp`` package, not ``benchmarks/llama_cpp.py`` beside this script (the script's folder leads sys.path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    import llama_cpp
    import llama_cpp.llama_cpp

    return llama_cpp


llama_cpp = _import_llama_cpp()


def logits(job: dict) -> dict:
    ids = [int(i) for i in job["ids"]]
    llm = llama_cpp.Llama(model_path=job["model"], n_ctx=len(ids) + 16, n_batch=len(ids), n_ubatch=len(ids),
                          logits_all=True, n_threads=int(job.get("threads", 2)),
                          n_threads_batch=int(job.get("threads", 2)), verbose=False)
    llm.eval(ids)
    out = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
    np.save(job["out"], out)
    return {"tokens": len(ids), "vocab": int(out.shape[1]), "parameters": int(llm._model.n_params())}


def info(_job: dict) -> dict:
    return {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


HANDLERS = {"logits": logits, "info": info}


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
