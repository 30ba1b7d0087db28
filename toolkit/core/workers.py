"""The one way the toolkit runs a child process.

Three kinds of children, one machinery:

* :func:`run_tool` runs an external program (the model builder, Olive) from its argv;
* :func:`run_worker` runs a *task* of one of our worker modules: a JSON payload in, a JSON
  result out, and optional progress *events* on the way (a JSON line each), which the
  parent sees as they come and which reset an idle timer;
* :func:`start_service` starts a long-running child (the endpoint server), waits until it
  is ready, and stops it with SIGTERM (a graceful shutdown) when asked.

Every child gets the offline environment, a log file (stdout and stderr), its own process
group (a timeout or Ctrl-C ends it and anything it started), a tie to its parent (it dies
with the toolkit even when the toolkit is killed with SIGKILL), and its own wall time and
peak RSS (that child's alone); :mod:`slmops.toolkit.core.system` does each the way the system allows. Failures are typed:
:class:`~slmops.toolkit.core.errors.ToolFailedError` with the child's own error in one line (never
its traceback, which stays in the log) and :class:`~slmops.toolkit.core.errors.ToolTimeoutError`.

A worker module ends with::

    if __name__ == "__main__":
        workers.serve({"task": handler})        # handler(payload: dict, emit) -> JSON-able

and children start as ``python -m slmops.toolkit.core.workers MODULE ARGS...`` (see :func:`main`).
"""

from __future__ import annotations

import faulthandler
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from slmops.toolkit.core import artifacts, settings, system
from slmops.toolkit.core.child_failures import cause, error_fields, kept_log, log_tail, raise_typed
from slmops.toolkit.core.errors import SlmopsError, ToolFailedError, ToolTimeoutError

_PARENT = "SLMOPS_PARENT_PID"
_WORKER_FLAG = "--slmops-worker"
_POLL_S = 0.05


@dataclass(frozen=True)
class ChildRun:
    """What one child process did and cost.

    Attributes:
        command: The argv that ran.
        wall_s: Wall-clock seconds.
        peak_rss_mib: The child's own peak resident set size in MiB.
        log_path: Its combined stdout and stderr.
        result: A worker's JSON result (None for an external tool).
    """

    command: tuple[str, ...]
    wall_s: float
    peak_rss_mib: float
    log_path: Path
    result: object = None


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs ``python -m module args`` in this interpreter, through the launcher (:func:`main`).

    Example:
        >>> python_module("onnxruntime_genai.models.builder", "-h")[1:4]
        ['-m', 'slmops.toolkit.core.workers', 'onnxruntime_genai.models.builder']
    """
    return [sys.executable, "-m", "slmops.toolkit.core.workers", module, *args]


def _end_group(proc: subprocess.Popen) -> None:
    """Terminate the child's process group, then kill it if it does not go within 5 s."""
    for force, grace in ((False, 5.0), (True, 5.0)):
        if proc.poll() is not None:
            break
        system.signal_group(proc, force=force)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


def _run(command: list[str], *, log_path: Path, name: str, cwd: Path | None, timeout: float | None,
         idle_timeout: float | None, progress: Callable[[], bool] | None,
         startup_s: float = 0.0) -> tuple[int, float, float]:
    """Run ``command`` to its end; return (exit code, wall seconds, peak RSS MiB)."""
    env = {**os.environ, **settings.OFFLINE_ENV, _PARENT: str(os.getpid())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=env, **system.own_group_kwargs())
        watch = system.ChildWatch(proc)
        idle_deadline = start + startup_s + idle_timeout if idle_timeout else None
        try:
            while True:
                # The child's own peak memory, kept by the watch (Popen.wait would discard it on POSIX).
                code = watch.poll()
                if code is not None:
                    return code, time.monotonic() - start, watch.peak_rss_mib
                now = time.monotonic()
                if progress is not None and progress() and idle_timeout:
                    idle_deadline = now + idle_timeout
                if timeout and now - start > timeout:
                    raise ToolTimeoutError(name, timeout, log_path)
                if idle_deadline and now > idle_deadline:
                    raise ToolTimeoutError(name, idle_timeout, log_path)
                time.sleep(_POLL_S)
        except BaseException:
            _end_group(proc)
            raise


def run_tool(command: list[str], *, log_path: Path, name: str | None = None, cwd: Path | None = None,
             timeout: float | None = None) -> ChildRun:
    """Run an external program to completion, offline, logging to ``log_path``.

    Raises:
        ToolFailedError: non-zero exit; the message carries the log's last lines.
        ToolTimeoutError: it ran past ``timeout`` seconds and was killed.
        KeyboardInterrupt: passed on after the child (and its children) ended.
    """
    name = name or Path(command[0]).name
    code, wall, peak = _run(command, log_path=log_path, name=name, cwd=cwd, timeout=timeout, idle_timeout=None,
                            progress=None)
    if code != 0:
        tail = log_tail(log_path, 60)
        if "No space left on device" in tail:
            raise ToolFailedError(name, code, log_path, "the disk is full: free some space and run again")
        fallback = f"it was killed by signal {-code}" if code < 0 else "it printed no error"
        raise ToolFailedError(name, code, log_path, cause(tail) or fallback)
    return ChildRun(tuple(command), wall, peak, log_path)


class _Events:
    """Reads a worker's events file as it grows and hands each new record to ``on_event``."""

    def __init__(self, path: Path, on_event: Callable[[dict], None] | None) -> None:
        self.path, self.on_event, self.offset, self.count = path, on_event, 0, 0

    def poll(self) -> bool:
        """Read what arrived since the last call; True when at least one whole record did."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return False
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a record being written has no newline yet
        self.offset += len(complete)
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        for record in records:
            self.count += 1
            if self.on_event is not None:
                self.on_event(record)
        return bool(records)


def run_worker(module: str, task: str, payload: dict, *, name: str, log_path: Path | None = None,
               timeout: float | None = None, idle_timeout: float | None = None, startup_s: float = 0.0,
               on_event: Callable[[dict], None] | None = None) -> ChildRun:
    """Run ``task`` of the worker module ``module`` on ``payload`` in a child process; return its result.

    Args:
        module: A module that calls :func:`serve` under ``__main__``.
        task: The task's name in that module.
        payload: JSON-able input.
        name: What it is, in words, for errors (e.g. "benchmark of smollm2-int4").
        log_path: Where its log goes (default: a scratch folder, removed whatever happens; on a
            failure the log is first moved to
            :func:`~slmops.toolkit.core.child_failures.kept_log`, which the error names).
        timeout: Seconds it may take in all.
        idle_timeout: Seconds it may go without an event.
        startup_s: Extra seconds before the first event (e.g. to load a model).
        on_event: Called with each event record as it arrives.

    Raises:
        ToolFailedError: the task raised (the message is its own error, in one line) or the process died.
        ToolTimeoutError: past ``timeout`` or ``idle_timeout``; the child was killed.

    Example:
        >>> run_worker("slmops.toolkit.runtimes.genai", "decode", {"models": {"int4": "models/int4"}}, name="probe").result
        {'int4': 118.2}
    """
    work = _scratch(task)
    log = log_path or work / "worker.log"
    (work / "input.json").write_text(json.dumps({"task": task, "payload": payload}))
    events = _Events(work / "events.jsonl", on_event)
    command = python_module(module, _WORKER_FLAG, str(work))
    try:
        code, wall, peak = _run(command, log_path=log, name=name, cwd=None, timeout=timeout,
                                idle_timeout=idle_timeout, progress=events.poll, startup_s=startup_s)
        events.poll()
        output = json.loads((work / "output.json").read_text()) if (work / "output.json").is_file() else {}
        if code != 0 or "result" not in output:
            error = output.get("error")
            if error:
                raise_typed(error)
                detail = f"{error['type']}: {error['message']}"
            else:
                detail = ("the process died" + (f" (signal {-code})" if code < 0 else "") + ": "
                          + (cause(log_tail(log, 60)) or "it printed no error"))
            raise ToolFailedError(name, code, log, detail)
        return ChildRun(tuple(command), wall, peak, log, output["result"])
    except ToolFailedError as exc:
        if log_path is not None:
            raise
        # The scratch folder goes; the log the error names must not go with it.
        kept = kept_log(task, log)
        if isinstance(exc, ToolTimeoutError):
            raise ToolTimeoutError(exc.tool, exc.seconds, kept) from exc
        raise ToolFailedError(exc.tool, exc.returncode, kept, exc.detail) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _scratch(task: str) -> Path:
    """A new folder for one child's input, events, result and log: ``<home>/workers/.TASK.working-PID-*``.

    The parent removes it when the child is done; a parent killed before that (SIGKILL, a power
    cut) leaves it, and the next :func:`run_worker` of any process removes those of dead processes.
    """
    root = settings.home() / "workers"
    artifacts.remove_stale(root)
    return artifacts.staging_dir(root / task, "working")


def serve(tasks: dict[str, Callable[[dict, Callable[[dict], None]], object]]) -> None:
    """The child side of :func:`run_worker`: read the payload, run the task, write its result or error.

    A :class:`~slmops.toolkit.core.errors.SlmopsError` is reported as it is; any other exception too,
    with its traceback in the log. Exits 0 on success and 1 on an error.
    """
    if len(sys.argv) != 3 or sys.argv[1] != _WORKER_FLAG:
        sys.exit(f"usage: python -m slmops.toolkit.core.workers MODULE {_WORKER_FLAG} DIR (started by run_worker)")
    work = Path(sys.argv[2])
    job = json.loads((work / "input.json").read_text())
    with (work / "events.jsonl").open("a") as events:

        def emit(record: dict) -> None:
            events.write(json.dumps(record, ensure_ascii=False) + "\n")
            events.flush()

        try:
            output: dict = {"result": tasks[job["task"]](job["payload"], emit)}
            code = 0
        except Exception as exc:  # noqa: BLE001 (every failure goes back to the parent as data)
            if not isinstance(exc, SlmopsError):
                import traceback

                traceback.print_exc()
            # Our own errors are written as messages for the user; another's first line is its cause.
            message = str(exc) if isinstance(exc, SlmopsError) else (str(exc).splitlines() or [""])[0]
            output, code = {"error": {"type": type(exc).__name__, "message": message or type(exc).__name__,
                                      "fields": error_fields(exc) if isinstance(exc, SlmopsError) else {}}}, 1
    (work / "output.json.partial").write_text(json.dumps(output))
    (work / "output.json.partial").replace(work / "output.json")
    sys.exit(code)


class Service:
    """A long-running child (a server) started by :func:`start_service`; stop it with :meth:`stop` or ``with``.

    Attributes:
        command: Its argv.
        log_path: Its combined stdout and stderr.
    """

    def __init__(self, proc: subprocess.Popen, command: list[str], log_path: Path, name: str) -> None:
        self._proc, self.command, self.log_path, self.name = proc, tuple(command), log_path, name

    @property
    def running(self) -> bool:
        """True until the child exits."""
        return self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM (a graceful shutdown: in-flight work finishes), SIGKILL after ``grace_s``; the exit code."""
        if self.running:
            system.signal_group(self._proc)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _end_group(self._proc)
        return self._proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_service(command: list[str], *, log_path: Path, name: str, ready: Callable[[], bool],
                  startup_timeout: float = 120.0) -> Service:
    """Start a long-running child (offline, own process group, dying with its parent) and wait until ``ready()``.

    Raises:
        ToolFailedError: it exited before it was ready (the message carries its log's last lines).
        ToolTimeoutError: not ready within ``startup_timeout`` seconds; it was stopped.
    """
    env = {**os.environ, **settings.OFFLINE_ENV, _PARENT: str(os.getpid())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                **system.own_group_kwargs())
    service = Service(proc, command, log_path, name)
    deadline = time.monotonic() + startup_timeout
    try:
        while not ready():
            if not service.running:
                raise ToolFailedError(name, proc.returncode, log_path,
                                      f"it stopped before it was ready; last lines of its log:\n{log_tail(log_path, 5)}")
            if time.monotonic() > deadline:
                raise ToolTimeoutError(name, startup_timeout, log_path)
            time.sleep(0.1)
    except BaseException:
        _end_group(proc)
        raise
    return service


def _die_with_parent() -> None:
    """End this process when its parent dies (see :func:`slmops.toolkit.core.system.die_with_parent`); stop now if it has."""
    parent = os.environ.get(_PARENT)
    system.die_with_parent(int(parent) if parent else None)
    if parent and os.getppid() != int(parent):
        sys.exit("the toolkit process that started this one has gone; stopping")


def main() -> None:
    """``python -m slmops.toolkit.core.workers MODULE ARGS...``: run MODULE as ``__main__``, offline, dying with its parent."""
    if len(sys.argv) < 2:
        sys.exit("usage: python -m slmops.toolkit.core.workers MODULE [ARGS...]")
    _die_with_parent()
    # A native crash (a segfault in ONNX Runtime, an abort in the SDK) leaves every thread's stack in the log.
    faulthandler.enable()
    settings.apply_offline_env()
    module = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
