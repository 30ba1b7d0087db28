"""Measurements of this process and machine: memory, CPU, memory bandwidth, versions, time.

Memory figures are MiB (2^20 bytes; the kernel counts KiB) under ``_mib`` names; sizes on disk
(:func:`slmops.toolkit.core.artifacts.dir_size_mb`) are MB (10^6 bytes) under ``_mb`` names.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from dataclasses import asdict, dataclass

import psutil

from slmops.toolkit.core import system

_MIB = 1 << 20

#: Packages whose versions a run records (reports, ``bench.json``, manifests).
VERSIONED = ("slmops-toolkit", "foundry-local-sdk", "onnxruntime", "onnxruntime-genai", "onnxruntime-genai-core",
             "olive-ai", "onnx", "transformers", "torch", "papermill", "ipywidgets")


def timestamp() -> str:
    """Local time with its UTC offset, the form every result file uses."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    return psutil.Process().memory_info().rss / _MIB


def available_mib() -> float:
    """Memory a new process can use now, in MiB: the system's available memory, capped by a cgroup limit.

    Example:
        >>> available_mib() > 0
        True
    """
    available = psutil.virtual_memory().available
    left = system.memory_limit_left_bytes()
    return (available if left is None else min(available, left)) / _MIB


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (see :func:`slmops.toolkit.core.system.peak_rss_mib`)."""
    return system.peak_rss_mib()


@dataclass(frozen=True)
class CpuUse:
    """CPU use over a stretch of time (:class:`CpuMeter`).

    Attributes:
        cpu_percent: This process's CPU time over wall time (100 = one core busy).
        system_cpu_percent: All CPUs' busy time over the same time (100 = the whole machine busy).
    """

    cpu_percent: float
    system_cpu_percent: float


class CpuMeter:
    """Process and whole-machine CPU use between :meth:`start` and :meth:`stop`.

    Example:
        >>> meter = CpuMeter()
        >>> meter.start()
        >>> 0 <= meter.stop().system_cpu_percent <= 100
        True
    """

    def start(self) -> None:
        """Take the starting readings."""
        self._cpu, self._system, self._wall = time.process_time(), psutil.cpu_times(), time.perf_counter()

    def stop(self) -> CpuUse:
        """The CPU use since :meth:`start`."""
        wall = time.perf_counter() - self._wall
        now = psutil.cpu_times()
        total = sum(now) - sum(self._system)
        idle = (now.idle + getattr(now, "iowait", 0.0)) - (self._system.idle + getattr(self._system, "iowait", 0.0))
        return CpuUse((time.process_time() - self._cpu) / wall * 100 if wall > 0 else 0.0,
                      (total - idle) / total * 100 if total > 0 else 0.0)


@dataclass(frozen=True)
class CpuInfo:
    """This machine's CPU.

    Attributes:
        cpu: Its model.
        logical_cpus: Logical CPUs.
        physical_cores: Physical cores.
    """

    cpu: str
    logical_cpus: int
    physical_cores: int


def cpu_info() -> CpuInfo:
    """CPU model, logical CPUs and physical cores of this machine.

    Example:
        >>> cpu_info().logical_cpus >= cpu_info().physical_cores >= 1
        True
    """
    logical = os.cpu_count() or 1
    return CpuInfo(system.cpu_model(), logical, psutil.cpu_count(logical=False) or logical)


def machine() -> dict:
    """This machine as a run records it: CPU, cores, cache sizes and memory."""
    return {**asdict(cpu_info()), "caches": system.cache_sizes(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)}


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
