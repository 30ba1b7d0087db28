"""The conversion stage's result: each build's ``manifest.json``, and ``convert.json`` (the list of them).

Version history of a manifest:

1. (no ``schema_version``) as version 2 without the field.
2. ``schema_version`` recorded; memory figures (MiB) under ``_mb`` names.
3. Memory figures under ``_mib`` names (``peak_rss_mib``, ``memory.predicted_peak_mib``,
   ``memory.measured_peak_mib``, ``memory.available_mib_at_start``); ``_mb`` is left to sizes
   on disk (10^6 bytes: ``size_mb``, ``source_size_mb``, ``fp32_size_mb``). The fields are
   documented in the docs site's result files reference (``docs/reference/results.md``, generated from
   these modules).

Versions 1 and 2 were never released: they are read as written (their memory figures, under the
old names, are not shown). The manifest stays a mapping (its fields are many and grow with the
routes); what is read back goes through :func:`read_conversions`, which refuses a version this
toolkit does not know.
"""

from __future__ import annotations

import os
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.domain.results import schema_version

#: The version the conversion stage writes into each manifest.
SCHEMA_VERSION = 3


def read_conversions(path: str | os.PathLike[str]) -> list[dict]:
    """The manifests of a run's ``convert.json`` (an empty list when there is none).

    Raises:
        ResultVersionError: a manifest written by a newer toolkit.

    Example:
        >>> [m["precision"] for m in read_conversions("outputs/demo/models/convert.json")]
        ['fp32', 'int8', 'int4']
    """
    found = artifacts.read_json(Path(path), []) or []
    manifests = [m for m in found if isinstance(m, dict) and "precision" in m] if isinstance(found, list) else []
    for manifest in manifests:
        schema_version(manifest, "conversion manifest", SCHEMA_VERSION)
    return manifests
