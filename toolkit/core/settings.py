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


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Foundry Local's model cache and registrations.

    Order: the ``override`` argument (``--cache-dir``), ``$SLMOPS_CACHE_DIR``,
    then ``<home>/foundry``.

    Example:
        >>> cache_dir("/tmp/fl")
        PosixPath('/tmp/fl')
    """
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("SLMOPS_CACHE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (home() / "foundry").resolve()


def models_dir() -> Path:
    """Where materialized source models (the bundled one) are kept."""
    return home() / "models"
