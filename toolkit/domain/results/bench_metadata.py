"""``bench.json``'s ``metadata``: the machine, packages and run its rows were measured on.

Version history (``bench.json``'s, :mod:`slmops.toolkit.domain.results.bench`):

1. and 2. the memory bandwidth by thread count under ``memory_bandwidth_gbs_by_threads``, a mapping of the
   count (as text: a JSON key) to GB/s; still loaded (:func:`upgrade_metadata`).
3. under ``bandwidth_by_threads``, one :class:`Bandwidth` row per count.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Bandwidth:
    """The memory read bandwidth measured with one intra-op thread count (the way decode reads the weights).

    Attributes:
        threads: Intra-op threads (0: the runtime's default).
        gbs: GB/s.
    """

    threads: int
    gbs: float


@dataclass(frozen=True)
class BenchMetadata:
    """What a benchmark ran on: the machine, the package versions, when, and the machine's memory bandwidth.

    A field a file lacks (a hand-written or partial file) reads as its type's zero.

    Attributes:
        cpu: The CPU model.
        logical_cpus: Logical CPUs.
        physical_cores: Physical cores.
        versions: Python, the platform and the packages that shape the figures, by name.
        timestamp: When (ISO 8601, local time with its offset).
        caches: The CPU's cache sizes by level (``{"L3": "32768K"}``).
        isa: The CPU's vector extensions that decide ONNX Runtime's quantized kernels, by flag.
        memory_bandwidth_gbs: The highest read bandwidth measured, GB/s.
        bandwidth_by_threads: The read bandwidth with each thread count the rows ran with.
    """

    cpu: str = ""
    logical_cpus: int = 0
    physical_cores: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    timestamp: str = ""
    caches: dict[str, str] = field(default_factory=dict)
    isa: dict[str, bool] = field(default_factory=dict)
    memory_bandwidth_gbs: float = 0.0
    bandwidth_by_threads: tuple[Bandwidth, ...] = ()

    def bandwidth_gbs(self, threads: int) -> float | None:
        """The read bandwidth measured with ``threads`` intra-op threads, GB/s (None: not measured).

        Example:
            >>> BenchMetadata(bandwidth_by_threads=(Bandwidth(0, 12.5),)).bandwidth_gbs(0)
            12.5
        """
        return next((row.gbs for row in self.bandwidth_by_threads if row.threads == threads), None)


def upgrade_metadata(metadata: object) -> object:
    """A version-1 or -2 ``metadata`` with its bandwidth by thread count as :class:`Bandwidth` rows (each count
    as the JSON key held it, read as a number by :class:`Bandwidth`).

    Example:
        >>> upgrade_metadata({"cpu": "x", "memory_bandwidth_gbs_by_threads": {"0": 12.5}})
        {'cpu': 'x', 'bandwidth_by_threads': [{'threads': '0', 'gbs': 12.5}]}
    """
    if not isinstance(metadata, dict):
        return metadata
    by_threads = metadata.get("memory_bandwidth_gbs_by_threads", {})
    rest = {name: value for name, value in metadata.items() if name != "memory_bandwidth_gbs_by_threads"}
    if not isinstance(by_threads, dict):
        return rest
    return {**rest, "bandwidth_by_threads": [{"threads": threads, "gbs": gbs} for threads, gbs in by_threads.items()]}
