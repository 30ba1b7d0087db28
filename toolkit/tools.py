"""The one place that runs external tools (model builder, Olive, quantizer).

Each run gets the offline environment, a log file, and its own measured wall time and
peak RSS (from ``wait4``'s rusage for that child alone).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit import settings
from toolkit.errors import ToolFailedError


@dataclass(frozen=True)
class ToolRun:
    """What one external command cost.

    Attributes:
        command: The argv that ran.
        wall_s: Wall-clock seconds.
        peak_rss_mb: The child's peak resident set size in MB.
        log_path: Its combined stdout and stderr.
    """

    command: tuple[str, ...]
    wall_s: float
    peak_rss_mb: float
    log_path: Path


def package_versions(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Installed version of each package ("not installed" when missing), for manifests and reports."""
    import importlib.metadata

    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def python_module(module: str, *args: str) -> list[str]:
    """An argv that runs ``python -m module args`` in this interpreter."""
    return [sys.executable, "-m", module, *args]


def run_tool(
    command: list[str], *, log_path: Path, cwd: Path | None = None, name: str | None = None
) -> ToolRun:
    """Run ``command`` to completion, offline, logging to ``log_path``.

    Raises:
        ToolFailedError: non-zero exit; the message carries the log's last lines.
        KeyboardInterrupt: passed on after the child is terminated.
    """
    env = {**os.environ, **settings.OFFLINE_ENV}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        try:
            # wait4 gives this child's own rusage; Popen.wait would discard it.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise ToolFailedError(name or Path(command[0]).name, proc.returncode, log_path, tail)
    return ToolRun(tuple(command), wall, usage.ru_maxrss / 1024, log_path)
