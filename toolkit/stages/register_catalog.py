"""What Foundry Local's cache holds (its ``models/custom`` folders and its catalog), and removing a registration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.artifacts import dir_size_mb
from slmops.toolkit.core.errors import InvalidNameError, ModelNotFoundError
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.runtimes.foundry_session import local_catalog, models_root

INFERENCE_MODEL = "inference_model.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 64


def validate_name(name: str) -> str:
    """Return ``name`` if it is safe as a folder and model id, else raise.

    Raises:
        InvalidNameError: path separators, ``..``, whitespace, ``:``, or too long.

    Example:
        >>> validate_name("smollm2-int4")
        'smollm2-int4'
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("The model name is empty; pass --name NAME (letters, digits, '.', '_', '-').")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"The model name is {len(name)} characters; use at most {MAX_NAME}.")
    # fullmatch, not match: "$" would accept a name ending in a newline.
    if ".." in name or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"The model name {name!r} is not safe: use letters, digits, '.', '_' and '-' only "
            "(no path separators, '..', whitespace or ':'), starting with a letter or digit."
        )
    return name



def unregister(name: str, *, cache: str | Path | None = None, remove_files: bool = True) -> None:
    """Unregister every version of ``name`` and (by default) delete its cache folder.

    Raises:
        ModelNotFoundError: nothing of that name is registered.
    """
    validate_name(name)
    catalog = local_catalog(cache)
    ids = [m.id for m in catalog.list_models() if m.id.split(":")[0] == name]
    folder = models_root(cache) / name
    if not ids and not folder.exists():
        raise ModelNotFoundError(name, [row["name"] for row in list_models(cache)])
    for model_id in ids:
        catalog.unregister_model(model_id)
    if remove_files and folder.exists():
        shutil.rmtree(folder)


def list_models(cache: str | Path | None = None) -> list[dict]:
    """What Foundry Local has: the ``models/custom`` folders and the SDK's local catalog.

    Returns:
        One row per model: ``name``, ``model_id``, ``registered`` (in the catalog),
        ``folder`` (has the Foundry layout), ``precision``, ``method``, ``size_mb``, ``path``.
    """
    rows: dict[str, dict] = {}
    catalog = local_catalog(cache)  # opening the cache first recovers what a killed process left
    root = models_root(cache)
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info_file = folder / INFERENCE_MODEL
            info = artifacts.read_json(info_file, {})
            made = read_manifest(folder)
            rows[folder.name] = {
                "name": folder.name, "model_id": f"{folder.name}:{info.get('Version', '?')}",
                "registered": False, "folder": info_file.is_file(),
                "precision": (made.precision if made else "") or "?", "method": (made.method if made else "") or "?",
                "size_mb": round(dir_size_mb(folder), 1), "path": str(folder),
            }
    for model in catalog.list_models():
        name = model.id.split(":")[0]
        row = rows.setdefault(name, {
            "name": name, "model_id": model.id, "registered": True, "folder": False,
            "precision": "?", "method": "?", "size_mb": None, "path": "",
        })
        row["registered"] = True
        row["model_id"] = model.id
    return sorted(rows.values(), key=lambda row: row["name"])

