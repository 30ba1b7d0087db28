"""The scratch folder one build runs in: its children, logs, progress bar and the source's fingerprint.

A build is assembled beside its target and the folder removed at the end; when the build fails, its logs
are kept in ``<home>/logs`` and the error names them there.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from slmops.toolkit.core import artifacts, settings, workers
from slmops.toolkit.core.errors import ToolFailedError, ToolTimeoutError
from slmops.toolkit.domain.sources import fingerprint


@dataclass
class Workspace:
    """A build's scratch folder (removed at the end), its children, its progress bar and the source's fingerprint."""

    scratch: Path
    steps: list[str]
    bar: object
    source_fingerprint: Future
    runs: list[workers.ChildRun] = field(default_factory=list)

    @property
    def staging(self) -> Path:
        """Where the finished build is assembled."""
        return self.scratch / "model"

    @property
    def logs(self) -> Path:
        """The children's logs (kept in ``<home>/logs`` when the build fails)."""
        return self.scratch / "logs"

    def step(self, name: str) -> None:
        """Show the step under way."""
        self.bar.set_postfix_str(name)


@contextlib.contextmanager
def workspace(target: Path, title: str, steps: list[str], source: Path, progress: bool) -> Iterator[Workspace]:
    """A scratch folder beside ``target`` for one build; on failure its logs are kept and named in the error."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(steps), desc=title, disable=not progress, unit="step")
    bar.update()
    # Hash the source while the tools run (hashlib releases the GIL): ~1 s on a 540 MB model.
    hashing = ThreadPoolExecutor(max_workers=1)
    source_fingerprint = hashing.submit(fingerprint, source)
    artifacts.remove_stale(target.parent)  # scratch of a conversion that was killed
    scratch = artifacts.staging_dir(target, "building")
    try:
        # A write of ours that finds the disk full is a DiskFullError (a tool's own says so in its log).
        with artifacts.disk_full_as_error(target):
            yield Workspace(scratch, steps, bar, source_fingerprint)
    except ToolFailedError as exc:  # the log it names is in the scratch folder, about to go
        kept = _keep_logs(scratch / "logs", target)
        raise _relocated(exc, scratch / "logs", kept) from exc
    except BaseException:
        _keep_logs(scratch / "logs", target)
        raise
    finally:
        hashing.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)
        bar.close()


def _keep_logs(logs: Path, target: Path) -> Path:
    """Move a failed conversion's logs out of its scratch folder (which is removed) and return where they went.

    They go to ``<home>/logs/convert-<parent>-<target>``, replacing that target's previous
    failure's, so failed runs leave one folder per target and no more.
    """
    kept = settings.home() / "logs" / f"convert-{target.parent.name}-{target.name}"
    if logs.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(logs), str(kept))
    return kept


def _relocated(exc: ToolFailedError, logs: Path, kept: Path) -> ToolFailedError:
    """``exc`` naming its log where :func:`_keep_logs` moved it."""
    log = Path(exc.log_path)
    if log.is_relative_to(logs) and (kept / log.relative_to(logs)).exists():
        log = kept / log.relative_to(logs)
    if isinstance(exc, ToolTimeoutError):
        return ToolTimeoutError(exc.tool, exc.seconds, log)
    return ToolFailedError(exc.tool, exc.returncode, log, exc.detail)

