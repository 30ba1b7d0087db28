"""How a failed child is reported: the one line that says why, its kept log, and its own error raised here.

:mod:`slmops.toolkit.core.workers` runs the children; this module reads what a failed one left
(:func:`cause` from its log, :func:`kept_log` so the log outlives the scratch folder) and carries
a worker's typed error across the process boundary (:func:`error_fields` in the child,
:func:`raise_typed` in the parent).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from slmops.toolkit.core import errors, settings
from slmops.toolkit.core.errors import SlmopsError, ToolFailedError


def log_tail(log_path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a child's log ("" when it cannot be read)."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


#: A Python exception line as a traceback ends (``KeyError: 'position_ids'``, ``a.b.SomeError: ...``).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")


def cause(log_text: str) -> str:
    """The one line of a child's log that says why it failed: its last exception line, else its last line.

    Example:
        >>> cause("Traceback (most recent call last):\\n  File 'x'\\nKeyError: 'position_ids'\\n")
        "KeyError: 'position_ids'"
    """
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line[:500]
    return lines[-1][:500] if lines else ""


#: Failed children's logs kept under ``<home>/logs``; older ones are deleted.
KEPT_LOGS = 50


def kept_log(task: str, log: Path) -> Path:
    """Move a failed child's log out of its scratch folder into ``<home>/logs`` and return where it went.

    Each failure gets its own file (``worker-<task>-<time>-<pid>.log``), so an error's log is the
    one it names; only the newest :data:`KEPT_LOGS` are kept, so failed runs leave no growing debris.
    """
    folder = settings.home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"worker-{task}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.perf_counter_ns() % 10**6}.log"
    if log.is_file():
        shutil.move(str(log), str(kept))
    else:
        kept.write_text("(the child wrote no log)\n")
    for old in sorted(folder.glob("worker-*.log"), key=lambda f: f.stat().st_mtime)[:-KEPT_LOGS]:
        old.unlink(missing_ok=True)
    return kept


def raise_typed(error: dict) -> None:
    """Raise a child's own :class:`~slmops.toolkit.core.errors.SlmopsError` as the same class here, so its exit code holds.

    Its message and its fields (``InvalidOptionError.name``, ``ModelFolderError.path``, ...: those
    the child could send as JSON) come back with it.
    """
    cls = getattr(errors, str(error.get("type")), None)
    if isinstance(cls, type) and issubclass(cls, SlmopsError) and not issubclass(cls, ToolFailedError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, error["message"])
        exc.__dict__.update(error.get("fields") or {})
        raise exc


def error_fields(exc: BaseException) -> dict:
    """An error's own attributes that JSON can carry (the rest stay behind)."""
    out = {}
    for key, value in vars(exc).items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out
