"""Result files and folders: read them with clear errors, write them so nothing half-written looks finished.

Every stage writes through here: :func:`write_text`/:func:`write_json` write a temporary
sibling and rename it over the target (a rename within one folder is atomic), and
:func:`swap_into_place` replaces a whole folder only once its replacement is complete.
Scratch names carry the writer's PID (``.NAME.KIND-PID-XXXX``), so :func:`remove_stale`
can tell debris of a dead process from work in progress, and put back a previous result
that a killed swap had moved aside. A full disk becomes a :class:`DiskFullError`, and
:func:`links_leaving` finds links that would take a copy, hash or archive outside a folder.

Fault injection for crash tests: ``SLMOPS_CRASH_AT=POINT`` makes this process kill itself
(SIGKILL, as a user's ``kill -9`` would) at the named :func:`crash_point`: ``write:FILE`` just
before an atomic write of FILE lands, ``swap-aside`` and ``swap-in-place`` inside
:func:`swap_into_place`, ``convert-built`` and ``register-catalog`` in those stages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from slmops.toolkit.core import settings, system
from slmops.toolkit.core.errors import DiskFullError, InputError, ModelFolderError

#: The file beside every converted model that says how it was made.
MANIFEST = "manifest.json"

#: What a scratch folder of :func:`staging_dir` is for (its name says it, and :func:`remove_stale` knows each).
SCRATCH_KINDS = ("building", "staging", "training", "merging", "unpacking", "working")
_SCRATCH = re.compile(rf"^\.(?P<name>.+)\.(?P<kind>{'|'.join((*SCRATCH_KINDS, 'old', 'partial'))})-(?P<pid>\d+)-")


def crash_point(name: str) -> None:
    """Kill this process here with SIGKILL when ``$SLMOPS_CRASH_AT`` names this point (crash tests only)."""
    if os.environ.get("SLMOPS_CRASH_AT") == name:
        system.kill_self()


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn "no space left on device" while writing ``path`` into a :class:`DiskFullError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path) from exc
        raise


def links_leaving(folder: str | os.PathLike[str]) -> list[Path]:
    """Links under ``folder`` that point outside it (or nowhere): following one would leave the folder.

    Example:
        >>> links_leaving("outputs/demo/models/int4")
        []
    """
    root = Path(folder).resolve()
    found = []
    for item in sorted(Path(folder).rglob("*")):
        if item.is_symlink():
            target = item.resolve()
            if not target.exists() or not target.is_relative_to(root):
                found.append(item)
    return found


def check_no_links_leaving(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`ModelFolderError` if a link in ``folder`` leads outside it.

    A model folder is copied, hashed, registered and archived as it is; a link to, say,
    ``/etc/shadow`` must never be followed into Foundry Local's cache or a shared report.
    """
    leaving = links_leaving(folder)
    if leaving:
        shown = ", ".join(f"{p.relative_to(folder)} -> {os.readlink(p)}" for p in leaving[:3])
        raise ModelFolderError(folder, f"it holds links that lead outside it ({shown})",
                               "Copy the real files into the folder (e.g. `cp -rL SRC DST`) and use the copy.")


def read_text(path: str | os.PathLike[str]) -> str:
    """A text file's content as UTF-8.

    Raises:
        InputError: missing, unreadable or not UTF-8 (the message names the file and the fix).
    """
    file = Path(path)
    try:
        return file.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{file}: no such file.") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{file} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc
    except OSError as exc:
        raise InputError(f"{file} cannot be read ({exc.strerror}).") from exc


def read_json(path: str | os.PathLike[str], default: object = None) -> object:
    """A JSON file's content, or ``default`` when it does not exist (e.g. a stage that did not run).

    Raises:
        InputError: the file exists but is not UTF-8 JSON (names the file, line and column).

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
        raise InputError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                          "fix it, or write it again with the step that made it.") from exc


def dir_size_mb(path: str | os.PathLike[str], pattern: str = "**/*") -> float:
    """Total size in MB (10^6 bytes) of the regular files under ``path`` matching ``pattern``.

    Links are not followed, so a link to a file elsewhere adds nothing.
    """
    return sum(p.lstat().st_size for p in Path(path).glob(pattern) if p.is_file() and not p.is_symlink()) / 1e6


def prune_least_recent(folder: str | os.PathLike[str], pattern: str, limit_bytes: int) -> list[Path]:
    """Delete the least recently modified entries of ``folder`` matching ``pattern`` until the rest total at most ``limit_bytes``.

    An entry is a file or a folder (counted with everything in it). A cache marks an entry used
    by touching it, so the entries read last are kept.

    Returns:
        The files deleted.

    Example:
        >>> prune_least_recent(Path.home() / ".slmops" / "cache" / "parity", "*.npz", 2**30)
        []
    """
    newest_first = sorted((f for f in Path(folder).glob(pattern) if f.is_file() or f.is_dir()),
                          key=lambda f: f.stat().st_mtime, reverse=True)
    total, deleted = 0.0, []
    for entry in newest_first:
        total += dir_size_mb(entry) * 1e6 if entry.is_dir() else entry.stat().st_size
        if total > limit_bytes:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            deleted.append(entry)
    return deleted


def _scratch_name(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


@contextlib.contextmanager
def built_once(target: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold ``target``'s lock across processes while checking for it and building it.

    A result built once and reused (the bundled model, a fine-tune, a merge) is checked for and
    built under this lock, so two processes that start at once (two notebooks, two terminals,
    two test workers) build it once: the second waits, then finds it complete. The lock is the
    operating system's, released when its holder exits, even killed. Its file, named by a hash
    of ``target``'s absolute path, lies in ``locks/`` under :func:`settings.home`, not beside a
    user's folders.

    Args:
        target: The folder being built.
        what: What it is, for the line printed while waiting (``"the bundled model"``).
    """
    from filelock import FileLock, Timeout

    target = Path(target).resolve()
    locks = settings.home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(locks / f"{hashlib.sha256(str(target).encode()).hexdigest()[:20]}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process building {what} ({target}) ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it becomes ``path`` in one rename when the block ends well.

    On an error the temporary file is removed and ``path`` keeps what it had; a full disk is
    a :class:`DiskFullError`.

    Example:
        >>> with atomic_path("out/report.zip") as partial:
        ...     zipfile.ZipFile(partial, "w").close()
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_scratch_name(target, "partial"), dir=target.parent)
    os.close(handle)
    try:
        with disk_full_as_error(target):
            yield Path(temporary)
        crash_point(f"write:{target.name}")
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
        kind: One of :data:`SCRATCH_KINDS` (shown in the name; see :func:`remove_stale`).

    Raises:
        ValueError: an unknown ``kind``, whose scratch :func:`remove_stale` would not know.
    """
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"scratch kind {kind!r} is not one of {SCRATCH_KINDS}: remove_stale would never clean it")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_scratch_name(target, kind), dir=target.parent))


def check_out_folder(target: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse an output folder that cannot be made: it, or a folder above it, is an existing file.

    Every command that writes a folder checks this first, so such a path is refused in one
    line rather than failing midway on ``mkdir`` (``FileExistsError``/``NotADirectoryError``).

    Raises:
        InputError: ``target`` or one of its parents is a file (or a link to one); before anything is changed.
    """
    out = Path(target).expanduser().absolute()
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is a file" if path == out else f"is inside {path}, which is a file"
            raise InputError(f"{option} {out} {where}, not a folder: choose a folder path whose parents are "
                             f"folders (or move {path} away).")
        if path.is_dir():
            return


def check_replaceable(target: str | os.PathLike[str], what: str, markers: tuple[str, ...],
                      inputs: dict[str, str | os.PathLike[str] | None] | None = None) -> None:
    """Refuse an output folder whose replacement (:func:`swap_into_place`) would delete what is not ours.

    A result replaces its whole folder, so ``--out`` must be new, empty, or an earlier result
    of the same kind (holding one of ``markers``); never an input, a folder holding an input,
    or the current folder.

    Args:
        target: The output folder.
        what: The result, in words (e.g. "conversion"), for the message.
        markers: Files an earlier result of this kind holds (e.g. ``manifest.json``).
        inputs: What the work reads, by name (e.g. ``{"source model": path}``); None values are skipped.

    Raises:
        InputError: ``target`` is an input or holds one, is or holds the current folder, is a
            file, or is a folder of other files; before anything is changed.
    """
    check_out_folder(target)
    out = Path(target).expanduser().resolve()
    fix = "choose a new or empty folder for --out"
    for name, path in (inputs or {}).items():
        if path is None:
            continue
        read = Path(path).expanduser().resolve()
        if out == read or out in read.parents:
            raise InputError(f"--out {out} {'is' if out == read else 'holds'} the {name} {read}: writing the "
                             f"{what} there would delete it; {fix}.")
    here = Path.cwd().resolve()
    if out == here or out in here.parents:
        raise InputError(f"--out {out} {'is' if out == here else 'holds'} the current folder: writing the {what} "
                         f"there would delete everything in it; {fix}.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder: {fix}.")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).is_file() for m in markers):
        raise InputError(f"--out {out} holds other files and no earlier {what} (no {' or '.join(markers)}): "
                         f"writing the {what} there would delete them; {fix}, or remove it yourself first.")


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Clean up after processes that died in ``folder``: delete their scratch, put back what they moved aside.

    A swap killed between moving the previous result aside (``.NAME.old-PID-*``) and putting
    the new one in place leaves ``NAME`` missing: the previous result is renamed back, never
    deleted.

    Returns:
        What was removed or restored.
    """
    cleaned = []
    root = Path(folder)
    if not root.is_dir():
        return cleaned
    for item in sorted(root.iterdir()):
        match = _SCRATCH.match(item.name)
        if not match or psutil.pid_exists(int(match.group("pid"))):
            continue
        original = root / match.group("name")
        if match.group("kind") == "old" and not original.exists():
            item.rename(original)
        elif item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        cleaned.append(item)
    return cleaned


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
        crash_point("swap-aside")
    moved = False
    try:
        staging.rename(target)
        moved = True
        crash_point("swap-in-place")
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
