"""What a run was made from, so it can be rerun as written and a rerun can say what changed.

A run folder's ``run.json`` records, beside its ``params.json``: the source model's
fingerprint, the cases file's hash, the seed, the toolkit and package versions, and the
machine. :func:`differences` compares such a record with what a rerun would use now.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.core.measure import machine, timestamp, versions
from slmops.toolkit.domain.prompts import BUNDLED_CASES
from slmops.toolkit.domain.run_params import RunParams
from slmops.toolkit.domain.sources import fingerprint


def cases_hash(cases: str) -> str:
    """A short SHA-256 of the cases file a run uses (the bundled one when ``cases`` is empty)."""
    if cases:
        data = Path(cases).read_bytes()
    else:
        data = resources.files("slmops.toolkit.domain.data").joinpath(BUNDLED_CASES).read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


#: A run folder's record of what it was made from.
RUN_RECORD = "run.json"
#: Parameters that say where and how a run is shown, not what it computes.
_NOT_COMPARED = ("run_dir", "interactive")


@dataclass(frozen=True)
class ModelInput:
    """The source model a run used.

    Attributes:
        path: Its folder.
        fingerprint: Its content fingerprint.
    """

    path: str = "?"
    fingerprint: str = "?"


@dataclass(frozen=True)
class CasesInput:
    """The cases file a run used.

    Attributes:
        path: The file (``(bundled) NAME`` for the bundled cases).
        sha256: A short SHA-256 of its bytes.
    """

    path: str = "?"
    sha256: str = "?"


@dataclass(frozen=True)
class RunInputs:
    """What a run was made from.

    Attributes:
        model: The source model.
        cases: The cases file.
        seed: The seed.
        params: The parameters as run (None: recorded before parameters were kept).
    """

    model: ModelInput = field(default_factory=ModelInput)
    cases: CasesInput = field(default_factory=CasesInput)
    seed: int | None = None
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunRecord:
    """A run folder's ``run.json``: its inputs, the package versions and the machine.

    Attributes:
        inputs: What the run was made from.
        versions: Python, the platform and the packages that shape its figures.
        machine: The machine (CPU, cores, caches, memory).
        recorded: When (ISO 8601).
    """

    KIND: ClassVar[str] = RUN_RECORD

    inputs: RunInputs = field(default_factory=RunInputs)
    versions: dict[str, str | None] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    recorded: str = ""


def run_record(params: RunParams, model: Path) -> RunRecord:
    """The record of what ``params`` resolve to now: inputs' fingerprints, seed, versions, machine.

    Args:
        params: The run's parameters.
        model: The source model folder they resolve to (``params.model_dir``, or the bundled model's).

    Example:
        >>> run_record(RunParams(), bundled_model()).inputs.model.path.endswith("SmolLM2-135M-Instruct")
        True
    """
    # What it was asked, as run (params.json beside it can be edited afterwards, by hand or on purpose).
    asked = json.loads(json.dumps({k: v for k, v in params.as_dict().items() if k not in _NOT_COMPARED}))
    return RunRecord(RunInputs(ModelInput(str(model), fingerprint(model)),
                               CasesInput(params.cases or f"(bundled) {BUNDLED_CASES}", cases_hash(params.cases)),
                               params.seed, asked),
                     versions(), machine(), timestamp())


def read_run_record(run_dir: str | os.PathLike[str]) -> RunRecord | None:
    """The ``run.json`` of the run folder ``run_dir`` (None when it has none).

    Raises:
        InputError: not UTF-8 JSON.
        RecordError: not a run record.
    """
    file = Path(run_dir) / RUN_RECORD
    return codec.read(RunRecord, file) if file.is_file() else None


def write_run_record(run_dir: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``record`` as the run folder's ``run.json`` (atomically)."""
    return codec.write(Path(run_dir) / RUN_RECORD, record)


def differences(recorded: RunRecord, current: RunRecord) -> list[str]:
    """What a rerun would use that the recorded run did not: source model, cases, seed, packages.

    The machine is reported apart (a rerun elsewhere is expected; its timings will differ).

    Example:
        >>> differences(RunRecord(RunInputs(seed=0)), RunRecord(RunInputs(seed=1)))
        ['seed: 0 then, 1 now']
    """
    found = []
    then, now = recorded.inputs, current.inputs
    if then.model.fingerprint != now.model.fingerprint:
        found.append(f"model: {then.model.path} ({then.model.fingerprint}) then, "
                     f"{now.model.path} ({now.model.fingerprint}) now")
    if then.cases.sha256 != now.cases.sha256:
        found.append(f"cases: {then.cases.path} ({then.cases.sha256}) then, {now.cases.path} ({now.cases.sha256}) now")
    if then.seed != now.seed:
        found.append(f"seed: {then.seed} then, {now.seed} now")
    old_versions, new_versions = recorded.versions, current.versions
    for package in sorted(set(old_versions) | set(new_versions)):
        if package != "platform" and old_versions.get(package) != new_versions.get(package):
            found.append(f"{package}: {old_versions.get(package, 'absent')} then, "
                         f"{new_versions.get(package, 'absent')} now")
    return found


def parameter_differences(recorded: RunRecord, current: RunRecord) -> list[str]:
    """Parameters a rerun would use that differ from those the recorded run ran with (``params.json`` edited since).

    Runs recorded before their parameters were kept have none to compare (an empty list).

    Example:
        >>> parameter_differences(RunRecord(RunInputs(params={"repeats": 3})),
        ...                       RunRecord(RunInputs(params={"repeats": 5})))
        ['parameter repeats: 3 then, 5 now']
    """
    then, now = recorded.inputs.params, current.inputs.params or {}
    if then is None:
        return []
    return [f"parameter {key}: {then.get(key, 'absent')} then, {now.get(key, 'absent')} now"
            for key in sorted(set(then) | set(now)) if key != "seed" and then.get(key) != now.get(key)]


def machine_differences(recorded: RunRecord, current: RunRecord) -> list[str]:
    """How this machine differs from the recorded run's (CPU, cores, caches, memory)."""
    old, new = recorded.machine, current.machine
    return [f"{key}: {old.get(key)} then, {new.get(key)} now" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]
