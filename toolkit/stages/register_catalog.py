"""What Foundry Local's cache holds (its ``models/custom`` folders and its catalog), and removing a registration."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, replace
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
        raise ModelNotFoundError(name, [row.name for row in list_models(cache)])
    for model_id in ids:
        catalog.unregister_model(model_id)
    if remove_files and folder.exists():
        shutil.rmtree(folder)


@dataclass(frozen=True)
class CatalogEntry:
    """One model Foundry Local has: a ``models/custom`` folder, a catalog entry, or both (a row of ``slmops ls``).

    Attributes:
        name: The folder's (and the model id's) name.
        model_id: The catalog id, ``NAME:VERSION`` (``NAME:?`` for a folder with no version).
        registered: In the SDK's local catalog.
        folder: The folder has the Foundry layout (an ``inference_model.json``).
        precision: The precision it was converted at (its manifest's; ``?`` when unknown).
        method: How it was quantized (its manifest's; ``?`` when unknown).
        size_mb: The folder on disk, MB (None: no folder).
        path: The folder ('' when none).
    """

    name: str
    model_id: str
    registered: bool
    folder: bool
    precision: str = "?"
    method: str = "?"
    size_mb: float | None = None
    path: str = ""


def _folder_entry(folder: Path) -> CatalogEntry:
    """A ``models/custom`` folder as a row (registered or not: the catalog says)."""
    info_file = folder / INFERENCE_MODEL
    info = artifacts.read_json(info_file, {})
    made = read_manifest(folder)
    return CatalogEntry(folder.name, f"{folder.name}:{info.get('Version', '?')}", False, info_file.is_file(),
                        (made.precision if made else "") or "?", (made.method if made else "") or "?",
                        round(dir_size_mb(folder), 1), str(folder))


def list_models(cache: str | Path | None = None) -> list[CatalogEntry]:
    """What Foundry Local has: the ``models/custom`` folders and the SDK's local catalog, by name."""
    rows: dict[str, CatalogEntry] = {}
    catalog = local_catalog(cache)  # opening the cache first recovers what a killed process left
    root = models_root(cache)
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rows[folder.name] = _folder_entry(folder)
    for model in catalog.list_models():
        name = model.id.split(":")[0]
        rows[name] = replace(rows.get(name) or CatalogEntry(name, model.id, True, False), registered=True,
                             model_id=model.id)
    return sorted(rows.values(), key=lambda row: row.name)
