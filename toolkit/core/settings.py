"""Where things live, and the environment that keeps every tool offline and quiet."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment that every run (ours and the tools we start) gets: no hub calls, no telemetry.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "OLIVE_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_offline_env() -> None:
    """Set :data:`OFFLINE_ENV` in this process (existing values are kept)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def home() -> Path:
    """The toolkit's own folder: ``$SLMOPS_HOME`` or ``~/.slmops``."""
    return Path(os.environ.get("SLMOPS_HOME") or Path.home() / ".slmops")


_FOUNDRY_MODELS = "models"  # the folder `foundry cache location` prints, inside the cache


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Foundry Local's model cache and registrations.

    Order: the ``override`` argument (``--cache-dir``), ``$SLMOPS_CACHE_DIR``,
    then ``<home>/foundry``. The ``foundry`` CLI's own cache is accepted as printed by
    ``foundry cache location`` (its ``models`` folder, e.g. ``~/.foundry/cache/models``): the
    cache is the folder above it, so registrations land in its ``models/custom`` where the
    ``foundry`` CLI lists them.

    Example:
        >>> cache_dir("/tmp/fl")
        PosixPath('/tmp/fl')
    """
    chosen = override or os.environ.get("SLMOPS_CACHE_DIR")
    if not chosen:
        return (home() / "foundry").resolve()
    folder = Path(chosen).expanduser().resolve()
    if folder.name == _FOUNDRY_MODELS and not (folder / _FOUNDRY_MODELS).is_dir():
        return folder.parent
    return folder


def models_dir() -> Path:
    """Where materialized source models (the bundled one) are kept."""
    return home() / "models"
