"""slmops-toolkit: a fine-tuned small language model from a Hugging Face folder to a
quantized ONNX model in Foundry Local, tested and benchmarked.

Public names are imported lazily so ``import toolkit`` stays fast.
"""

from __future__ import annotations

import importlib

from toolkit.errors import (
    InvalidNameError,
    InvalidOptionError,
    InvalidPromptError,
    ModelFolderError,
    ModelNotFoundError,
    PromptTooLongError,
    RegistrationError,
    SlmopsError,
    TemplateError,
    ToolFailedError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

_LAZY = {
    "bundled_model": "toolkit.models",
    "make_tiny_model": "toolkit.models",
    "Precision": "toolkit.convert",
    "Method": "toolkit.convert",
    "Int4Options": "toolkit.convert",
    "ConvertSpec": "toolkit.convert",
    "convert": "toolkit.convert",
    "convert_all": "toolkit.convert",
    "Template": "toolkit.templates",
    "PromptTemplate": "toolkit.templates",
    "ModelConfig": "toolkit.register",
    "register": "toolkit.register",
    "register_all": "toolkit.register",
    "unregister": "toolkit.register",
    "list_models": "toolkit.register",
    "LoadedModel": "toolkit.foundry",
    "run_checklist": "toolkit.evaluate",
    "bench": "toolkit.bench",
    "run_pipeline": "toolkit.pipeline",
    "demo": "toolkit.pipeline",
}

__all__ = [
    "InvalidNameError", "InvalidOptionError", "InvalidPromptError", "ModelFolderError", "ModelNotFoundError",
    "PromptTooLongError", "RegistrationError", "SlmopsError", "TemplateError", "ToolFailedError",
    "UnsupportedArchitectureError", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
