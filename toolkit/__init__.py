"""slmops-toolkit: a fine-tuned small language model from a Hugging Face folder to a
quantized ONNX model in Foundry Local, tested and benchmarked.

Layers, each importing only the ones below it (checked by import-linter in ``make test``):
``core`` < ``domain`` < ``runtimes`` < ``stages`` < ``presentation`` < ``orchestration`` <
``cli`` (and the ``widgets`` package beside it). Public names are imported lazily so
``import toolkit`` stays fast.
"""

from __future__ import annotations

import importlib

from toolkit.core.errors import (
    InvalidNameError,
    InvalidOptionError,
    InvalidPromptError,
    ModelFolderError,
    ModelNotFoundError,
    ParamsError,
    PromptTooLongError,
    RegistrationError,
    SlmopsError,
    TemplateError,
    ToolFailedError,
    ToolTimeoutError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

_LAZY = {
    "bundled_model": "toolkit.domain.sources",
    "make_tiny_model": "toolkit.domain.sources",
    "Precision": "toolkit.domain.options",
    "Method": "toolkit.domain.options",
    "Int4Options": "toolkit.domain.options",
    "RunParams": "toolkit.domain.params",
    "Template": "toolkit.domain.templates",
    "PromptTemplate": "toolkit.domain.templates",
    "LoadedModel": "toolkit.runtimes.foundry",
    "ConvertSpec": "toolkit.stages.convert",
    "convert": "toolkit.stages.convert",
    "convert_all": "toolkit.stages.convert",
    "ModelConfig": "toolkit.stages.register",
    "register": "toolkit.stages.register",
    "register_all": "toolkit.stages.register",
    "unregister": "toolkit.stages.register",
    "list_models": "toolkit.stages.register",
    "run_checklist": "toolkit.stages.checklist",
    "run_checklists": "toolkit.stages.checklist",
    "bench": "toolkit.stages.bench",
    "load_run": "toolkit.presentation.compare",
    "compare_runs": "toolkit.presentation.compare",
    "run_pipeline": "toolkit.orchestration.pipeline",
    "demo": "toolkit.orchestration.pipeline",
}

__all__ = [
    "InvalidNameError", "InvalidOptionError", "InvalidPromptError", "ModelFolderError", "ModelNotFoundError",
    "ParamsError", "PromptTooLongError", "RegistrationError", "SlmopsError", "TemplateError", "ToolFailedError",
    "ToolTimeoutError", "UnsupportedArchitectureError",
]
__all__ += list(_LAZY)  # the lazily imported public names


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
