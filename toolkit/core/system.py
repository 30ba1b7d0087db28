"""Everything that differs between Linux, macOS and Windows, in one place.

The rest of the toolkit asks this module and never calls an operating-system-specific API
itself (no ``resource``, ``fcntl``, ``prctl``, process groups, ``/proc`` or ``/sys``): that
is how it starts on the machines the tutorial's readers use. psutil answers where it can
(memory, children, CPU); the rest is chosen by :func:`current` at call time, so tests can
simulate another system by monkeypatching ``sys.platform`` (and hiding a module with
``sys.modules[name] = None``).

What each system gives:

=====================  ==============================  ===========================  ==========================
                       Linux                           macOS                        Windows
=====================  ==============================  ===========================  ==========================
peak RSS (self)        ``getrusage`` (KiB)             ``getrusage`` (bytes)        psutil ``peak_wset``
peak RSS (a child)     ``wait4``'s rusage (KiB)        ``wait4``'s rusage (bytes)   psutil ``peak_wset``, sampled
memory limit           cgroup v2 ``memory.max``        none                         none
CPU model, flags       ``/proc/cpuinfo``               ``sysctl machdep.cpu``       ``platform.processor()``
cache sizes            sysfs ``cpu0/cache``            ``sysctl hw.*cachesize``     none recorded
a child's own group    new session, ``killpg``         new session, ``killpg``      new process group; psutil
                                                                                    ends the tree
dies with its parent   ``prctl(PR_SET_PDEATHSIG)``     a watchdog thread            a watchdog thread
stop signals           ``sigwait`` SIGTERM/SIGINT      ``sigwait`` SIGTERM/SIGINT   handlers: Ctrl-C, Ctrl-Break
=====================  ==============================  ===========================  ==========================
"""

from __future__ import annotations

import contextlib
import enum
import os
import platform as _stdlib_platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

_MIB = 1 << 20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

#: Where Linux keeps what this module reads (a test points them at a fake tree).
PROC_CPUINFO = Path("/proc/cpuinfo")
CGROUP_DIR = Path("/sys/fs/cgroup")
SYSFS_CPU_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


class System(enum.StrEnum):
    """The operating systems the toolkit knows."""

    LINUX = "linux"
    MACOS = "macos"
    WINDOWS = "windows"
    OTHER = "other"


def current() -> System:
    """This process's operating system, read from ``sys.platform`` on every call.

    Example:
        >>> current() in set(System)
        True
    """
    if sys.platform.startswith("linux"):
        return System.LINUX
    if sys.platform == "darwin":
        return System.MACOS
    if sys.platform in ("win32", "cygwin"):
        return System.WINDOWS
    return System.OTHER


def _posix() -> bool:
    return current() in (System.LINUX, System.MACOS)


def _rusage_mib(maxrss: float) -> float:
    """``ru_maxrss`` in MiB: Linux counts KiB, macOS bytes."""
    return maxrss / _MIB if current() is System.MACOS else maxrss / 1024


# --- memory ---------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (psutil has no peak on POSIX; rusage does)."""
    try:
        import resource
    except ImportError:  # Windows
        resource = None
    if resource is not None and _posix():
        return _rusage_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    info = psutil.Process().memory_info()
    return getattr(info, "peak_wset", info.rss) / _MIB


def memory_limit_left_bytes() -> int | None:
    """Bytes this process's container may still use (cgroup v2 limit less usage), or None without a limit.

    Only Linux has cgroups; macOS and Windows answer None (the system's available memory is all).
    """
    if current() is not System.LINUX:
        return None
    try:
        limit = (CGROUP_DIR / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((CGROUP_DIR / "memory.current").read_text())
    except (OSError, ValueError):
        return None


# --- the CPU --------------------------------------------------------------------------------


def _sysctl(name: str) -> str:
    """``sysctl -n NAME`` on macOS ("" when it fails)."""
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo_field(key: str) -> str:
    try:
        for line in PROC_CPUINFO.read_text().splitlines():
            name, _, value = (part.strip() for part in line.partition(":"))
            if name == key:
                return value
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name (psutil does not give it).

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    system = current()
    found = ""
    if system is System.LINUX:
        found = _cpuinfo_field("model name")
    elif system is System.MACOS:
        found = _sysctl("machdep.cpu.brand_string")
    return found or _stdlib_platform.processor() or _stdlib_platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags, lower case (``avx2``, ``avx512f``...); empty where the system does not say."""
    system = current()
    if system is System.LINUX:
        return set(_cpuinfo_field("flags").split())
    if system is System.MACOS:  # Intel Macs list them; Apple silicon has none of these x86 names
        text = f"{_sysctl('machdep.cpu.features')} {_sysctl('machdep.cpu.leaf7_features')}".lower()
        return {flag.replace(".", "_") for flag in text.split()}
    return set()


def cache_sizes() -> dict[str, str]:
    """CPU cache sizes by level and type (e.g. ``{"L1d": "32K", "L2": "2048K"}``); empty where unknown."""
    system = current()
    caches: dict[str, str] = {}
    if system is System.LINUX:
        for index in sorted(SYSFS_CPU_CACHE.glob("index*")):
            try:
                level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
                caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = \
                    (index / "size").read_text().strip()
            except OSError:
                continue
    elif system is System.MACOS:
        for key, name in (("L1d", "hw.l1dcachesize"), ("L1i", "hw.l1icachesize"), ("L2", "hw.l2cachesize"),
                          ("L3", "hw.l3cachesize")):
            value = _sysctl(name)
            if value.isdigit() and int(value) > 0:
                caches[key] = f"{int(value) // 1024}K"
    return caches


# --- processes ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists (any system)."""
    return psutil.pid_exists(pid)


def own_group_kwargs() -> dict:
    """``subprocess.Popen`` keyword arguments that start a child in its own process group.

    Example:
        >>> sorted(own_group_kwargs()) in (["start_new_session"], ["creationflags"])
        True
    """
    if current() is System.WINDOWS:
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    return {"start_new_session": True}


def signal_group(proc: subprocess.Popen, *, force: bool = False) -> None:
    """Ask a child started with :func:`own_group_kwargs`, and everything it started, to stop.

    POSIX: SIGTERM (SIGKILL with ``force``) to its process group. Windows has no group
    signals a console-less child obeys, so psutil ends the child's tree (terminate, which is
    already final there). A group already gone is not an error.
    """
    if _posix():
        try:
            os.killpg(proc.pid, signal.SIGKILL if force else signal.SIGTERM)
        except ProcessLookupError:
            pass
        return
    try:
        parent = psutil.Process(proc.pid)
        tree = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill() if force else process.terminate()


def _vm_hwm_mib(pid: int) -> float | None:
    """Linux: the peak resident memory of ``pid``'s current program (``VmHWM``: since its last exec), MiB; else None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ChildWatch:
    """Polls a child to its end and keeps the child's own peak resident memory.

    POSIX: ``wait4`` reaps the child with its own rusage (``Popen.wait`` would discard it). Linux
    folds the spawning process's peak into the child's ``ru_maxrss`` when the child execs (the
    address space it replaces was its parent's), so a child of a large process reads at least the
    parent's size: where that figure does not exceed this process's own peak at the spawn, the
    child's ``VmHWM`` (its program's own peak, sampled at every :meth:`poll`) is taken instead.
    Windows: the child's ``peak_wset``, sampled at every :meth:`poll` while it runs.

    Attributes:
        peak_rss_mib: The child's peak resident memory so far, MiB.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self._proc = proc
        self.peak_rss_mib = 0.0
        self._wait4 = getattr(os, "wait4", None) if _posix() else None
        self._parent_peak = _vm_hwm_mib(os.getpid())
        self._sampled: float | None = None

    def poll(self) -> int | None:
        """The child's exit code once it has ended, else None."""
        if self._wait4 is not None:
            pid, status, usage = self._wait4(self._proc.pid, os.WNOHANG)
            if not pid:
                sampled = _vm_hwm_mib(self._proc.pid)
                if sampled is not None:
                    self._sampled = max(self._sampled or 0.0, sampled)
                return None
            self._proc.returncode = os.waitstatus_to_exitcode(status)
            rusage = _rusage_mib(usage.ru_maxrss)
            inherited = self._parent_peak is not None and rusage <= self._parent_peak + 1
            self.peak_rss_mib = self._sampled if inherited and self._sampled is not None else rusage
            return self._proc.returncode
        with contextlib.suppress(psutil.Error):
            info = psutil.Process(self._proc.pid).memory_info()
            self.peak_rss_mib = max(self.peak_rss_mib, getattr(info, "peak_wset", info.rss) / _MIB)
        return self._proc.poll()


def die_with_parent(parent_pid: int | None, *, interval_s: float = 1.0) -> None:
    """Make this process end when ``parent_pid`` does, even if the parent is killed outright.

    Linux: the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``). macOS and
    Windows have none, so a daemon thread checks the parent every ``interval_s`` and exits.
    """
    if current() is System.LINUX:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        return
    if not parent_pid:
        return

    def watch() -> None:
        while psutil.pid_exists(parent_pid):
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, name="slmops-parent-watch", daemon=True).start()


_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>


def _glibc():
    """This process's C library when it is glibc on Linux (its allocator's calls), else None."""
    if current() is not System.LINUX or _stdlib_platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def fix_mmap_threshold(bytes_: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of ``bytes_`` or more with its own mapping, returned to the system when freed.

    glibc raises its mmap threshold each time a mapped block is freed, up to 32 MiB: after that,
    blocks of that size (the bundled model's 8.3 MiB of logits per request) come from its heap,
    which grows in steps and never shrinks. Over 120 requests that reads as a leak in some runs
    and not in others (seen: +70 to +104 MiB per 100 requests, then 0 in the next run, on the
    same build). Setting the threshold explicitly turns the adjustment off (``mallopt(3)``).

    Returns:
        True where it was set (Linux with glibc); elsewhere nothing changes.
    """
    libc = _glibc()
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(bytes_))) if libc is not None else False


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``), so RSS counts memory in use.

    glibc keeps freed memory in its heaps; which requests make a heap grow depends on the order
    of frees, so the same build's RSS rose in 2 MiB steps in one run and stayed flat in the next.
    Memory still held (a leak, or ONNX Runtime's own arena) stays resident either way.

    Returns:
        True where it ran (Linux with glibc); elsewhere nothing changes.
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def kill_self() -> None:
    """End this process at once, with no cleanup, as ``kill -9`` would (crash tests)."""
    if _posix():
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


_STOPS = ("SIGTERM", "SIGINT", "SIGBREAK")
_stopped = threading.Event()


def block_stop_signals() -> None:
    """Hold back SIGTERM and Ctrl-C from this thread and the threads it starts, for :func:`wait_for_stop`.

    Call it before starting threads (a native service's), so no handler runs in their middle.
    POSIX blocks the signals; Windows has no signal mask, so handlers set an event instead.
    """
    if _posix() and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        return
    _stopped.clear()
    for name in _STOPS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), lambda *_: _stopped.set())


def wait_for_stop() -> None:
    """Block until SIGTERM or Ctrl-C (Ctrl-Break too on Windows) arrives; call :func:`block_stop_signals` first."""
    if _posix() and hasattr(signal, "sigwait"):
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return
    while not _stopped.wait(0.5):
        pass
