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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError

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


@dataclass(frozen=True)
class AddedStopToken:
    """A stop token registration added to the converted model's EOS list.

    Attributes:
        id: The token id.
        token: Its text.
        origin: Where it came from, in words: the chat template's end of turn, or ``generation_config.json``
            (``from`` in the file).
    """

    id: int
    token: str
    origin: Annotated[str, codec.json_key("from")] = ""


@dataclass(frozen=True)
class StopTokens:
    """The token ids that end generation, reconciled at registration (the registration record's ``stop_tokens``).

    Attributes:
        eos_token_id: ``genai_config.json``'s ``model.eos_token_id`` as registered.
        before: What the converted model had.
        added: Each id added: the chat template's end of turn, or ``generation_config.json``'s EOS list.
        generation_config: The ``generation_config.json`` read ('' when none was found).
    """

    eos_token_id: tuple[int, ...] = ()
    before: tuple[int, ...] = ()
    added: tuple[AddedStopToken, ...] = ()
    generation_config: str = ""

    def note(self) -> str:
        """One line for the CLI: what was added, or that nothing was needed."""
        if not self.added:
            return f"Stop tokens: eos_token_id {list(self.eos_token_id)} already holds the end of turn; nothing added."
        what = ", ".join(f"{row.token} ({row.id}, {row.origin})" for row in self.added)
        return (f"Stop tokens: added {what} to genai_config.json's eos_token_id: {list(self.before)} -> "
                f"{list(self.eos_token_id)}.")


@dataclass(frozen=True)
class ThreadSetting:
    """The intra-op threads a model was registered with (the registration record's ``threads``).

    Attributes:
        setting: ``auto`` (probed), a count, or None (the runtime's default).
        chosen: The count the probe chose (``auto`` only).
        speedup_vs_default: Its decode speed over the runtime's default (x).
        probe: Each count tried, its decode speed and time to first token.
        reused_probe: The probe was read back from an earlier one on the same graph.
    """

    setting: int | str | None = None
    chosen: int | None = None
    speedup_vs_default: float | None = None
    probe: tuple[ThreadSpeed, ...] = ()
    reused_probe: bool = False


@dataclass(frozen=True)
class ToolCallingRecord:
    """How tool calling was set up (the registration record's ``tool_calling``).

    Attributes:
        markers: The tool-call boundaries published to the runtime (empty: none).
        supports_tool_calling: Whether the catalog says it calls tools (the probe got a valid call).
        probe: What the probe saw, in words.
    """

    markers: tuple[str, ...] = ()
    supports_tool_calling: bool = False
    probe: str = ""


@dataclass(frozen=True)
class RegistrationRecord:
    """How and when a model was registered: :data:`REGISTRATION_RECORD` beside it in Foundry Local's cache.

    Attributes:
        source: The ONNX model folder it was registered from.
        name: The registered name.
        version: The catalog version.
        template: The prompt template chosen.
        notes: What registration noted, in words.
        registered: When (ISO 8601).
        stop_tokens: The stop tokens reconciled.
        threads: The intra-op threads.
        tool_calling: How tool calling was set up (None until the registration's probe ran).
    """

    KIND: ClassVar[str] = REGISTRATION_RECORD

    source: str = ""
    name: str = ""
    version: int = 0
    template: str = ""
    notes: tuple[str, ...] = ()
    registered: str = ""
    stop_tokens: StopTokens = field(default_factory=StopTokens)
    threads: ThreadSetting = field(default_factory=ThreadSetting)
    tool_calling: ToolCallingRecord | None = None


def read_registration(folder: str | os.PathLike[str]) -> RegistrationRecord | None:
    """The registration record beside the model in ``folder`` (None: none, or not one this toolkit reads)."""
    file = Path(folder) / REGISTRATION_RECORD
    try:
        return codec.read(RegistrationRecord, file) if file.is_file() else None
    except InputError:  # written by hand or cut short: registered again as if it had none
        return None


def write_registration(folder: str | os.PathLike[str], record: RegistrationRecord) -> Path:
    """Write ``record`` beside the model in ``folder`` (atomically)."""
    return codec.write(Path(folder) / REGISTRATION_RECORD, record)


def reference_of(models: list[RegisteredModel]) -> str | None:
    """The FP32 model among ``models`` (the checklist's quality and timing reference), if there is one.

    Example:
        >>> reference_of([RegisteredModel("m-fp32", "m-fp32:1", "fp32")])
        'm-fp32'
    """
    return next((m.name for m in models if m.precision == "fp32"), None)
