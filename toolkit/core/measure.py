"""Measurements of this process and machine: memory, CPU, memory bandwidth, versions, time.

Memory figures are MiB (the kernel counts KiB) under ``_mb`` names, as ``bench.json`` has
always recorded them; sizes on disk (:func:`toolkit.core.artifacts.dir_size_mb`) are 10^6 bytes.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time
from pathlib import Path

import psutil

_MIB = 1 << 20

#: Packages whose versions a run records (reports, ``bench.json``, manifests).
VERSIONED = ("slmops-toolkit", "foundry-local-sdk", "onnxruntime", "onnxruntime-genai", "onnxruntime-genai-core",
             "olive-ai", "onnx", "transformers", "torch", "papermill", "ipywidgets")


def timestamp() -> str:
    """Local time with its UTC offset, the form every result file uses."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    return psutil.Process().memory_info().rss / _MIB


def available_mb() -> float:
    """Memory a new process can use now, in MiB: the system's available memory, capped by a cgroup limit.

    Example:
        >>> available_mb() > 0
        True
    """
    available = psutil.virtual_memory().available
    limit_file = Path("/sys/fs/cgroup/memory.max")
    try:
        limit = limit_file.read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available / _MIB


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (psutil has no peak; rusage does)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuMeter:
    """Process and whole-machine CPU use between :meth:`start` and :meth:`stop`.

    Example:
        >>> meter = CpuMeter()
        >>> meter.start()
        >>> sorted(meter.stop())
        ['cpu_percent', 'system_cpu_percent']
    """

    def start(self) -> None:
        """Take the starting readings."""
        self._cpu, self._system, self._wall = time.process_time(), psutil.cpu_times(), time.perf_counter()

    def stop(self) -> dict:
        """``{"cpu_percent", "system_cpu_percent"}`` since :meth:`start` (100 = one core / the whole machine)."""
        wall = time.perf_counter() - self._wall
        now = psutil.cpu_times()
        total = sum(now) - sum(self._system)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (self._system.idle + getattr(self._system, "iowait", 0.0))
        return {"cpu_percent": (time.process_time() - self._cpu) / wall * 100 if wall > 0 else 0.0,
                "system_cpu_percent": (total - idle) / total * 100 if total > 0 else 0.0}


def _cpu_model() -> str:
    """The CPU's model name (psutil does not give it; ``/proc/cpuinfo`` does on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                return value
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    """CPU model, logical CPUs and physical cores of this machine."""
    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False) or os.cpu_count()}


def _cache_sizes() -> dict[str, str]:
    """CPU cache sizes by level and type (e.g. ``{"L1d": "32K", "L2": "2048K"}``), from Linux's sysfs."""
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = (index / "size").read_text().strip()
        except OSError:
            continue
    return caches


def machine() -> dict:
    """This machine as a run records it: CPU, cores, cache sizes and memory."""
    return {**cpu_info(), "caches": _cache_sizes(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)}


def package_versions(names: tuple[str, ...] | list[str] = VERSIONED) -> dict[str, str]:
    """Installed version of each package ("not installed" when missing).

    Example:
        >>> package_versions(["no-such-package-here"])
        {'no-such-package-here': 'not installed'}
    """
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages that shape a run's figures."""
    return {"python": platform.python_version(), "platform": platform.platform(), **package_versions()}


def run_metadata() -> dict:
    """CPU, versions and time of this run, for result files."""
    return {**cpu_info(), "versions": versions(), "timestamp": timestamp()}
