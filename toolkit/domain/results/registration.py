"""The registration stage's result (``registered.json``): which models a run registered, by name and precision.

The checklist and the benchmark take their models from here (the names the run registered and
the precision each was converted at), never by rebuilding ``PREFIX-PRECISION`` from the
parameters and never by reading a precision back out of a name.

Version history of ``registered.json``:

1. (no ``schema_version``: a JSON list of rows) ``name``, ``model_id``, ``precision``,
   ``template``, ``threads``, ``threads_speedup``, ``threads_probe``, ``tool_calling``, ``path``,
   ``notes``; read by :func:`read_registered` as version 2 (:meth:`RegisteredFile.upgrade`).
2. ``{"schema_version": 2, "models": [the same rows]}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from slmops.toolkit.core import codec

#: The version :func:`write_registered` writes.
SCHEMA_VERSION = 2
#: The record written beside each registered model in Foundry Local's cache (how and when it was registered).
REGISTRATION_RECORD = ".slmops-registration.json"


@dataclass(frozen=True)
class ThreadSpeed:
    """One thread count's best decode speed and time to first token (a row of a thread probe).

    Attributes:
        threads: Intra-op threads (0: the runtime's default).
        decode_tps: Best decode speed, tokens/s.
        ttft_ms: Best time to first token, ms.
    """

    threads: int
    decode_tps: float
    ttft_ms: float


@dataclass(frozen=True)
class RegisteredModel:
    """One model a run registered.

    Attributes:
        name: The registered name (what the checklist and the benchmark ask for).
        model_id: The catalog id, ``NAME:VERSION``.
        precision: The precision it was converted at (from its conversion manifest).
        template: The prompt template it was registered with.
        threads: ONNX Runtime intra-op threads it runs with (``"default"``: the runtime's own choice).
        threads_speedup: Decode speed over the runtime's default with the chosen threads (x), when probed.
        threads_probe: The probe: each count tried, its decode speed (tokens/s) and time to first token (ms).
        tool_calling: Whether it calls tools, in words (the registration's probe).
        path: Its folder in the Foundry Local cache.
        notes: What registration noted, in words.
    """

    name: str
    model_id: str
    precision: str
    template: str = ""
    threads: int | str = "default"
    threads_speedup: float | None = None
    threads_probe: tuple[ThreadSpeed, ...] = ()
    tool_calling: str = ""
    path: str = ""
    notes: str = ""


@dataclass(frozen=True)
class RegisteredFile:
    """``registered.json``: the models a run registered, in the order registered.

    Attributes:
        models: One row per model.
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "registered.json"

    models: tuple[RegisteredModel, ...]

    @classmethod
    def upgrade(cls, data: object, version: int) -> object:
        """Version 1 was the list of rows itself."""
        return {"models": data} if isinstance(data, list) else data


def write_registered(path: str | os.PathLike[str], models: list[RegisteredModel]) -> Path:
    """Write a run's ``registered.json``.

    Example:
        >>> write_registered("outputs/demo/registered.json", [RegisteredModel("m-fp32", "m-fp32:1", "fp32")]).name
        'registered.json'
    """
    return codec.write(path, RegisteredFile(tuple(models)))


def read_registered(path: str | os.PathLike[str]) -> list[RegisteredModel]:
    """The models a run registered, from its ``registered.json``.

    Raises:
        InputError: there is no such file (the registration stage has not run).
        RecordError: it is not a list of models.
        ResultVersionError: it was written by a newer toolkit.

    Example:
        >>> [m.precision for m in read_registered("outputs/demo/registered.json")]
        ['fp32', 'int8', 'int4']
    """
    file = Path(path)
    found = codec.read(RegisteredFile, file, missing=f"No {file.name} at {file.parent}: register the run's models "
                       "first (notebook 02, `slmops run`, or `slmops demo`).")
    return list(found.models)


def reference_of(models: list[RegisteredModel]) -> str | None:
    """The FP32 model among ``models`` (the checklist's quality and timing reference), if there is one.

    Example:
        >>> reference_of([RegisteredModel("m-fp32", "m-fp32:1", "fp32")])
        'm-fp32'
    """
    return next((m.name for m in models if m.precision == "fp32"), None)
