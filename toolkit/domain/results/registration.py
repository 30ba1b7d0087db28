"""The registration stage's result (``registered.json``): which models a run registered, by name and precision.

The checklist and the benchmark take their models from here (the names the run registered and
the precision each was converted at), never by rebuilding ``PREFIX-PRECISION`` from the
parameters and never by reading a precision back out of a name.

Version history of ``registered.json``:

1. (no ``schema_version``: a JSON list of rows) ``name``, ``model_id``, ``precision``,
   ``template``, ``threads``, ``threads_speedup``, ``threads_probe``, ``path``, ``notes`` and
   other keys; read by :func:`read_registered` as it is (unknown keys kept in ``extra``).
2. ``{"schema_version": 2, "models": [the same rows]}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.results import schema_version

#: The version :func:`registered_file` writes.
SCHEMA_VERSION = 2
#: The record written beside each registered model in Foundry Local's cache (how and when it was registered).
REGISTRATION_RECORD = ".slmops-registration.json"

_FIELDS = ("name", "model_id", "precision", "template", "threads", "threads_speedup", "threads_probe", "path",
           "notes")


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
        threads_probe: The probe: ``{"threads", "decode_tps" (tokens/s), "ttft_ms" (ms)}`` per count tried.
        path: Its folder in the Foundry Local cache.
        notes: What registration noted, in words.
        extra: Any other fields the file holds for it, as written.
    """

    name: str
    model_id: str
    precision: str
    template: str = ""
    threads: int | str = "default"
    threads_speedup: float | None = None
    threads_probe: list[dict] = field(default_factory=list)
    path: str = ""
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The row as ``registered.json`` holds it."""
        return {**{name: getattr(self, name) for name in _FIELDS}, **self.extra}

    @classmethod
    def from_json(cls, row: dict) -> RegisteredModel:
        """A row as :meth:`to_json` (or a version-1 file) wrote it."""
        return cls(**{name: row[name] for name in _FIELDS if name in row},
                   extra={k: v for k, v in row.items() if k not in _FIELDS})


def registered_file(rows: list[dict]) -> dict:
    """The content of ``registered.json`` for the registration rows of a run (each a :class:`RegisteredModel`).

    Example:
        >>> registered_file([{"name": "m-fp32", "model_id": "m-fp32:1", "precision": "fp32"}])["schema_version"]
        2
    """
    return {"schema_version": SCHEMA_VERSION, "models": [RegisteredModel.from_json(row).to_json() for row in rows]}


def read_registered(path: str | os.PathLike[str]) -> list[RegisteredModel]:
    """The models a run registered, from its ``registered.json``.

    Raises:
        InputError: there is no such file (the registration stage has not run), or it is not a list of models.
        ResultVersionError: it was written by a newer toolkit.

    Example:
        >>> [m.precision for m in read_registered("outputs/demo/registered.json")]
        ['fp32', 'int8', 'int4']
    """
    file = Path(path)
    data = artifacts.read_json(file)
    if data is None:
        raise InputError(f"No {file.name} at {file.parent}: register the run's models first (notebook 02, "
                         "`slmops run`, or `slmops demo`).")
    rows = data.get("models") if isinstance(data, dict) and schema_version(data, file.name, SCHEMA_VERSION) else data
    if not isinstance(rows, list) or not all(isinstance(row, dict) and "name" in row for row in rows):
        raise InputError(f"{file} is not a registration result (a list of registered models).")
    return [RegisteredModel.from_json(row) for row in rows]


def reference_of(models: list[RegisteredModel]) -> str | None:
    """The FP32 model among ``models`` (the checklist's quality and timing reference), if there is one.

    Example:
        >>> reference_of([RegisteredModel("m-fp32", "m-fp32:1", "fp32")])
        'm-fp32'
    """
    return next((m.name for m in models if m.precision == "fp32"), None)
