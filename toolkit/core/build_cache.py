"""A cache of finished folders (model builds) by a key of everything that decides their content.

A build that a later run would make again from the same source, with the same options, the
same packages and the same toolkit code is copied from here instead (as ccache or Olive's
cache do). An entry is complete or absent: it is copied to a scratch folder in the cache and
renamed into place (:mod:`~slmops.toolkit.core.artifacts`), so a killed copy leaves only
scratch that the next :func:`store` removes. The least recently used entries go once the
cache holds more than ``max_mb``.

Layout: ``<home>/cache/<kind>/<key>/`` (``<home>`` is ``$SLMOPS_HOME`` or ``~/.slmops``);
``rm -rf`` of that folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from slmops.toolkit.core import artifacts, settings


def folder(kind: str) -> Path:
    """Where entries of ``kind`` live."""
    return settings.home() / "cache" / kind


def key_of(*parts: object) -> str:
    """A 20-hex-digit key of JSON-serializable ``parts`` (their order counts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def code_fingerprint(*modules: object) -> str:
    """A fingerprint of the source files of ``modules``: a cached result made by other code is not reused."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())  # type: ignore[attr-defined]
    return digest.hexdigest()[:16]


def lookup(kind: str, key: str) -> Path | None:
    """The complete entry ``key`` of ``kind`` (marked used now), or None."""
    entry = folder(kind) / key
    if not entry.is_dir():
        return None
    os.utime(entry)  # least recently used goes first
    return entry


def store(kind: str, key: str, source: Path, *, max_mb: float = 4096.0) -> Path:
    """Copy the complete folder ``source`` into the cache as ``key`` and return the entry.

    An existing entry of that key is replaced. Entries beyond ``max_mb`` (oldest use first) are
    removed (the one just stored last).

    Raises:
        DiskFullError: the disk filled during the copy (nothing is left in the cache).
    """
    root = folder(kind)
    root.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale(root)
    entry = root / key
    copy_out(source, entry)
    os.utime(entry)  # the copy took the source's times: mark it used now, so it is pruned last
    artifacts.prune_least_recent(root, "[!.]*", int(max_mb * 1e6))
    return entry


def store_json(kind: str, key: str, name: str, data: object) -> Path:
    """Keep ``data`` as the JSON file ``name`` of a new entry ``key`` (see :func:`store`) and return the entry."""
    with tempfile.TemporaryDirectory() as scratch:
        artifacts.write_json(Path(scratch) / name, data)
        return store(kind, key, Path(scratch))


def copy_out(entry: Path, target: Path) -> None:
    """Put a copy of the folder ``entry`` at ``target`` (replacing it), complete or not at all.

    Raises:
        DiskFullError: the disk filled during the copy (nothing is left at ``target``'s side).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = artifacts.staging_dir(target)
    try:
        with artifacts.disk_full_as_error(target):
            shutil.copytree(entry, staging, dirs_exist_ok=True)
        artifacts.swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

