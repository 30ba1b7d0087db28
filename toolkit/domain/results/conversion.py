"""The conversion stage's result: each build's ``manifest.json``, and ``convert.json`` (the list of them).

Version history of a manifest:

1. (no ``schema_version``) as version 2 without the field.
2. ``schema_version`` recorded; memory figures (MiB) under ``_mb`` names: ``peak_rss_mb``,
   ``memory.predicted_peak_mb``, ``memory.measured_peak_mb``, ``memory.available_mb_at_start``.
3. Memory figures under ``_mib`` names (``peak_rss_mib``, ``memory.predicted_peak_mib``,
   ``memory.measured_peak_mib``, ``memory.available_mib_at_start``); ``_mb`` is left to sizes
   on disk (10^6 bytes: ``size_mb``, ``source_size_mb``, ``fp32_size_mb``). The fields are
   documented in the docs site's result files reference (``docs/reference/results.md``, generated from
   these modules).

The manifest stays a mapping (its fields are many and grow with the routes); what is read back
goes through :func:`read_conversions`, which renames an older version's keys and refuses a
version this toolkit does not know.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.domain.results import schema_version

#: The version the conversion stage writes into each manifest.
SCHEMA_VERSION = 3

#: Version 1-2 memory keys (MiB under ``_mb`` names) and their names since version 3.
_MEMORY_RENAMES = {"predicted_peak_mb": "predicted_peak_mib", "measured_peak_mb": "measured_peak_mib",
                   "available_mb_at_start": "available_mib_at_start"}


def upgrade_manifest(manifest: dict) -> dict:
    """``manifest`` with the current version's key names (a copy; a current manifest comes back equal).

    Raises:
        ResultVersionError: a manifest written by a newer toolkit.

    Example:
        >>> upgrade_manifest({"schema_version": 2, "precision": "int4", "peak_rss_mb": 812.0})["peak_rss_mib"]
        812.0
    """
    version = schema_version(manifest, "conversion manifest", SCHEMA_VERSION)
    if version >= 3:
        return dict(manifest)
    out = {("peak_rss_mib" if key == "peak_rss_mb" else key): value for key, value in manifest.items()}
    if isinstance(out.get("memory"), dict):
        out["memory"] = {_MEMORY_RENAMES.get(key, key): value for key, value in out["memory"].items()}
    return out


def read_conversions(path: str | os.PathLike[str]) -> list[dict]:
    """The manifests of a run's ``convert.json`` (an empty list when there is none), in the current key names.

    Raises:
        ResultVersionError: a manifest written by a newer toolkit.

    Example:
        >>> [m["precision"] for m in read_conversions("outputs/demo/models/convert.json")]
        ['fp32', 'int8', 'int4']
    """
    found = artifacts.read_json(Path(path), []) or []
    manifests = [m for m in found if isinstance(m, dict) and "precision" in m] if isinstance(found, list) else []
    return [upgrade_manifest(manifest) for manifest in manifests]
