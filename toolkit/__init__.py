"""slmops-toolkit: a fine-tuned small language model from a Hugging Face folder to a
quantized ONNX model in Foundry Local, tested and benchmarked.

Layers, each importing only the ones below it (checked by import-linter in ``make test``):
``core`` < ``domain`` < ``runtimes`` < ``stages`` < ``presentation`` < ``orchestration`` <
``cli`` (and the ``widgets`` package beside it). Public names are imported lazily so
``import slmops.toolkit`` stays fast.
"""

from __future__ import annotations

import importlib

from slmops.toolkit.core.errors import (
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
    "bundled_model": "slmops.toolkit.weights.bundled",
    "Precision": "slmops.toolkit.domain.options",
    "Method": "slmops.toolkit.domain.options",
    "Int4Options": "slmops.toolkit.domain.options",
    "RunParams": "slmops.toolkit.domain.run_params",
    "Template": "slmops.toolkit.domain.templates",
    "PromptTemplate": "slmops.toolkit.domain.templates",
    "LoadedModel": "slmops.toolkit.runtimes.foundry",
    "ConvertSpec": "slmops.toolkit.stages.convert_plan",
    "convert": "slmops.toolkit.stages.convert",
    "convert_all": "slmops.toolkit.stages.convert",
    "ModelConfig": "slmops.toolkit.stages.register",
    "register": "slmops.toolkit.stages.register",
    "register_all": "slmops.toolkit.stages.register",
    "unregister": "slmops.toolkit.stages.register_catalog",
    "list_models": "slmops.toolkit.stages.register_catalog",
    "run_checklist": "slmops.toolkit.stages.checklist",
    "run_checklists": "slmops.toolkit.stages.checklist",
    "bench": "slmops.toolkit.stages.bench",
    "load_run": "slmops.toolkit.presentation.compare",
    "compare_runs": "slmops.toolkit.presentation.compare",
    "run_pipeline": "slmops.toolkit.orchestration.pipeline",
    "demo": "slmops.toolkit.orchestration.pipeline",
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
    raise AttributeError(f"module 'slmops.toolkit' has no attribute {name!r}")
