"""A distributed sweep's record: where each point ran (``placements.json`` in the sweep's folder).

One record, :class:`Placement`, written and read with the codec (:mod:`slmops.toolkit.core.codec`):
:func:`write_placements` is its writer, :func:`read_placements` its reader. The file is a list, one
entry per point, each with its ``node_type`` beside the fields (for a reader without the toolkit).

Version history of ``placements.json``:

1. A list of placements (a list carries no ``schema_version``: it is version 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, codec

#: The version :func:`write_placements` writes (the file is a list: no ``schema_version`` in it).
SCHEMA_VERSION = 1
#: Where a distributed sweep records its points' placements, in the sweep's folder.
PLACEMENTS = "placements.json"


@dataclass(frozen=True)
class Placement:
    """Where a sweep point ran and how it went.

    Attributes:
        label: The point's run label (its folder under the sweep's output).
        status: ``ok`` or ``FAILED: ...``.
        node: Ray node id (first 8 hex digits).
        host: The node's host name.
        cpu: The node's CPU model.
        cpus: CPUs the task held (the node's whole ``CPU`` resource).
        attempts: Tries it took (more than one: a worker or node was lost).
        wall_s: Wall time of the successful try, on its node.
        lost: What ended each earlier try.
    """

    label: str
    status: str
    node: str
    host: str
    cpu: str
    cpus: int
    attempts: int
    wall_s: float
    lost: tuple[str, ...] = ()

    @property
    def node_type(self) -> str:
        """What timings depend on: the CPU model and the cores the point had."""
        return f"{self.cpu}, {self.cpus} CPU{'s' if self.cpus != 1 else ''}"


def write_placements(out_dir: str | os.PathLike[str], placements: list[Placement]) -> Path:
    """Write ``out_dir/placements.json``: each placement with its ``node_type``."""
    return artifacts.write_json(Path(out_dir) / PLACEMENTS,
                                [{**codec.dump(p), "node_type": p.node_type} for p in placements])


def read_placements(out_dir: str | os.PathLike[str]) -> list[Placement]:
    """The placements a distributed sweep recorded in ``out_dir``.

    Raises:
        InputError: no such file (not a distributed sweep's folder), or not JSON.
        RecordError: an entry of the wrong shape.

    Example:
        >>> [p.status for p in read_placements("outputs/sweep")]
        ['ok', 'ok']
    """
    return codec.read(list[Placement], Path(out_dir) / PLACEMENTS,
                      missing=f"{Path(out_dir) / PLACEMENTS}: no such file; run the sweep with `slmops run --ray`.")
