"""What a run was made from, so it can be rerun as written and a rerun can say what changed.

A run folder's ``run.json`` records, beside its ``params.json``: the source model's
fingerprint, the cases file's hash, the seed, the toolkit and package versions, and the
machine. :func:`differences` compares such a record with what a rerun would use now.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

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


#: Parameters that say where and how a run is shown, not what it computes.
_NOT_COMPARED = ("run_dir", "interactive")


def run_record(params: RunParams, model: Path) -> dict:
    """The record of what ``params`` resolve to now: inputs' fingerprints, seed, versions, machine.

    Args:
        params: The run's parameters.
        model: The source model folder they resolve to (``params.model_dir``, or the bundled model's).

    Example:
        >>> run_record(RunParams(), bundled_model())["inputs"]["model"]["path"].endswith("SmolLM2-135M-Instruct")
        True
    """
    return {
        "inputs": {
            "model": {"path": str(model), "fingerprint": fingerprint(model)},
            "cases": {"path": params.cases or f"(bundled) {BUNDLED_CASES}", "sha256": cases_hash(params.cases)},
            "seed": params.seed,
            # What it was asked, as run (params.json beside it can be edited afterwards, by hand or on purpose).
            "params": json.loads(json.dumps({k: v for k, v in params.as_dict().items() if k not in _NOT_COMPARED})),
        },
        "versions": versions(),
        "machine": machine(),
        "recorded": timestamp(),
    }


def differences(recorded: dict, current: dict) -> list[str]:
    """What a rerun would use that the recorded run did not: source model, cases, seed, packages.

    The machine is reported apart (a rerun elsewhere is expected; its timings will differ).

    Example:
        >>> differences({"inputs": {"seed": 0}}, {"inputs": {"seed": 1}})
        ['seed: 0 then, 1 now']
    """
    found = []
    then, now = recorded.get("inputs", {}), current.get("inputs", {})
    for name in ("model", "cases"):
        key = "fingerprint" if name == "model" else "sha256"
        old, new = then.get(name, {}), now.get(name, {})
        if old.get(key) != new.get(key):
            found.append(f"{name}: {old.get('path', '?')} ({old.get(key, '?')}) then, "
                         f"{new.get('path', '?')} ({new.get(key, '?')}) now")
    if then.get("seed") != now.get("seed"):
        found.append(f"seed: {then.get('seed')} then, {now.get('seed')} now")
    old_versions, new_versions = recorded.get("versions", {}), current.get("versions", {})
    for package in sorted(set(old_versions) | set(new_versions)):
        if package != "platform" and old_versions.get(package) != new_versions.get(package):
            found.append(f"{package}: {old_versions.get(package, 'absent')} then, "
                         f"{new_versions.get(package, 'absent')} now")
    return found


def parameter_differences(recorded: dict, current: dict) -> list[str]:
    """Parameters a rerun would use that differ from those the recorded run ran with (``params.json`` edited since).

    Runs recorded before their parameters were kept have none to compare (an empty list).

    Example:
        >>> parameter_differences({"inputs": {"params": {"repeats": 3}}}, {"inputs": {"params": {"repeats": 5}}})
        ['parameter repeats: 3 then, 5 now']
    """
    then, now = recorded.get("inputs", {}).get("params"), current.get("inputs", {}).get("params") or {}
    if not isinstance(then, dict):
        return []
    return [f"parameter {key}: {then.get(key, 'absent')} then, {now.get(key, 'absent')} now"
            for key in sorted(set(then) | set(now)) if key != "seed" and then.get(key) != now.get(key)]


def machine_differences(recorded: dict, current: dict) -> list[str]:
    """How this machine differs from the recorded run's (CPU, cores, caches, memory)."""
    old, new = recorded.get("machine", {}), current.get("machine", {})
    return [f"{key}: {old.get(key)} then, {new.get(key)} now" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)]
