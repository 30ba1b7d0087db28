"""Result files and folders: read them with clear errors, write them so nothing half-written looks finished.

Every stage writes through here: :func:`write_text`/:func:`write_json` write a temporary
sibling and rename it over the target (a rename within one folder is atomic), and
:func:`swap_into_place` replaces a whole folder only once its replacement is complete.
Scratch names carry the writer's PID (``.NAME.KIND-PID-XXXX``), so :func:`remove_stale`
can tell debris of a dead process from work in progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from toolkit.core.errors import SlmopsError

#: The file beside every converted model that says how it was made.
MANIFEST = "manifest.json"

_SCRATCH = re.compile(r"^\..+\.(?:building|staging|old|partial)-(\d+)-")


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file's content as UTF-8.

    Raises:
        SlmopsError: missing, unreadable or not UTF-8 (the message names the file and the fix).
    """
    file = Path(path)
    try:
        return file.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise SlmopsError(f"{file}: no such file.") from exc
    except UnicodeDecodeError as exc:
        raise SlmopsError(f"{file} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc
    except OSError as exc:
        raise SlmopsError(f"{file} cannot be read ({exc.strerror}).") from exc


def read_json(path: str | os.PathLike[str], default: object = None) -> object:
    """A JSON file's content, or ``default`` when it does not exist (e.g. a stage that did not run).

    Raises:
        SlmopsError: the file exists but is not UTF-8 JSON (names the file, line and column).

    Example:
        >>> read_json("/no/such/file.json", {})
        {}
    """
    file = Path(path)
    if not file.is_file():
        return default
    text = read_text(file)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlmopsError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                          "fix it, or write it again with the step that made it.") from exc


def read_manifest(model_dir: str | os.PathLike[str]) -> dict:
    """The ``manifest.json`` of a converted model, or ``{}`` when it has none."""
    manifest = read_json(Path(model_dir) / MANIFEST, {})
    return manifest if isinstance(manifest, dict) else {}


def dir_size_mb(path: str | os.PathLike[str], pattern: str = "**/*") -> float:
    """Total size in MB (10^6 bytes) of the regular files under ``path`` matching ``pattern``.

    Links are not followed, so a link to a file elsewhere adds nothing.
    """
    return sum(p.lstat().st_size for p in Path(path).glob(pattern) if p.is_file() and not p.is_symlink()) / 1e6


def _scratch_name(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it becomes ``path`` in one rename when the block ends well.

    On an error the temporary file is removed and ``path`` keeps what it had.

    Example:
        >>> with atomic_path("out/report.zip") as partial:
        ...     zipfile.ZipFile(partial, "w").close()
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_scratch_name(target, "partial"), dir=target.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically: readers see the old file or the whole new one, never a part."""
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return Path(path)


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    """Write ``data`` as indented UTF-8 JSON, atomically (see :func:`write_text`)."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False))


def staging_dir(target: str | os.PathLike[str], kind: str = "staging") -> Path:
    """A new empty scratch folder beside ``target`` (same file system, so it can be renamed into place).

    Args:
        target: The folder the work will become.
        kind: ``building`` or ``staging`` (shown in the name; see :func:`remove_stale`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_scratch_name(target, kind), dir=target.parent))


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete scratch files and folders in ``folder`` left by processes that no longer run.

    Returns:
        What was removed.
    """
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for item in root.iterdir():
        match = _SCRATCH.match(item.name)
        if not match or psutil.pid_exists(int(match.group(1))):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def swap_into_place(staging: Path, target: Path, *, then: Callable[[], None] | None = None) -> None:
    """Replace the folder ``target`` with the complete folder ``staging``.

    The previous ``target`` is moved aside and deleted only after the new one is in place
    and ``then`` (e.g. a catalog registration) succeeded; if either fails, the previous one
    is put back, so a failure never loses what was there.
    """
    os.chmod(staging, 0o755)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=_scratch_name(target, "old"), dir=target.parent))
        old.rmdir()
        target.rename(old)
    moved = False
    try:
        staging.rename(target)
        moved = True
        if then is not None:
            then()
    except BaseException:
        if moved:  # the new folder is in place but `then` failed: take it out again
            shutil.rmtree(target, ignore_errors=True)
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
