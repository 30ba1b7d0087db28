"""Sweeps on Ray: every sweep point is one Ray task that holds a whole node.

Benchmarks must never share a machine, so the driver places each point itself: one task at
a time per node, asking for all of that node's CPUs and pinned to it
(``NodeAffinitySchedulingStrategy``). The task runs the whole pipeline in a scratch folder
on its node and brings the run folder back as a zip through Ray's object store (model
weights stay behind: each model's manifest comes back, and ``params.json`` rebuilds them),
so no shared file system is needed. A task lost with its worker or node (killed, out of
memory, node gone) is put back in the queue and run again, up to :data:`MAX_ATTEMPTS`
times, on whichever node is free; a pipeline that fails on its own is reported, not
retried. Ray is an optional extra: ``pip install 'slmops-toolkit[cluster]'``.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import shutil
import socket
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, settings, system
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.core.measure import cpu_info
from slmops.toolkit.domain import run_params
from slmops.toolkit.domain.results.sweep import Placement, write_placements
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.presentation import report

log = logging.getLogger(__name__)

#: Tries per point when its worker or node is lost (a pipeline failure is not retried).
MAX_ATTEMPTS = 3
#: Where points run on a node: ``<tmp>/slmops-ray-points/<label>-<pid>`` (cleaned when the pid is gone).
SCRATCH = Path(tempfile.gettempdir()) / "slmops-ray-points"
INSTALL_HINT = "pip install 'slmops-toolkit[cluster]' (or `pip install -c constraints.txt -e .[cluster]` here)"


@dataclass(frozen=True)
class NodeSlot:
    """A live Ray node with at least one CPU, as a point is placed on it.

    Attributes:
        host: Its host name.
        cpus: Its whole ``CPU`` resource (a point holds all of it).
    """

    host: str
    cpus: int


@dataclass(frozen=True)
class PointResult:
    """What a sweep point's Ray task returns (:func:`run_point`).

    Attributes:
        status: ``ok`` or ``FAILED: ...``.
        zip: The run folder without model weights, zipped.
        host: The node's host name.
        cpu: The node's CPU model.
        wall_s: Wall time of the point, s.
    """

    status: str
    zip: bytes
    host: str
    cpu: str
    wall_s: float


def _ray():
    """Import Ray, or say how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}.") from exc
    return ray


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray when it is None.

    Raises:
        InputError: Ray is not installed, or no cluster answers at ``address``.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    settings.apply_offline_env()
    env = {key: os.environ[key] for key in settings.OFFLINE_ENV}
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"Could not join the Ray cluster at {address!r}: {exc}. Start one with `ray start --head` "
                         "(and `ray start --address HEAD:6379` on each other machine), or omit the address "
                         "to run on a local Ray.") from exc


def _nodes() -> dict[str, NodeSlot]:
    """Alive nodes with at least one CPU, by node id (read from Ray's node table)."""
    ray = _ray()
    return {n["NodeID"]: NodeSlot(n.get("NodeManagerHostname") or n["NodeManagerAddress"],
                                  int(n["Resources"].get("CPU", 0)))
            for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1}


def _clean_scratch() -> None:
    """Remove the scratch of points whose process is gone (a killed worker's)."""
    for folder in SCRATCH.glob("*-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not system.pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def run_point(label: str, params: dict) -> PointResult:
    """Ray task body: run one sweep point's pipeline on this node; return its run folder as a zip."""
    _clean_scratch()
    scratch = SCRATCH / f"{label}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    try:
        try:
            pipeline.run_pipeline(params, scratch / label, progress=False)
            status = "ok"
        except SlmopsError as exc:
            status = f"FAILED: {exc}"
        packed = report.archive(scratch / label, scratch / f"{label}.zip")
        return PointResult(status, packed.read_bytes(), socket.gethostname(), cpu_info().cpu,
                           round(time.perf_counter() - start, 1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(data: bytes, label: str, out_dir: Path) -> None:
    """Put a point's zip in ``out_dir/label``, replacing an older one only once it is whole."""
    target = out_dir / label
    artifacts.remove_stale(out_dir)
    staging = artifacts.staging_dir(target, "unpacking")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():  # the zip is ours, but a path must never leave the folder
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise SlmopsError(f"Point {label}'s archive holds an unsafe path {member!r}.")
            zf.extractall(staging)
        artifacts.swap_into_place(staging / label, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the worker or node was lost (so the point deserves another try)."""
    ray = _ray()
    lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError,
            ray.exceptions.TaskUnschedulableError, ray.exceptions.LocalRayletDiedError)
    return isinstance(exc, lost) or isinstance(getattr(exc, "cause", None), lost)


def run_points(points: list[tuple[str, dict]], out_dir: Path, *, progress: bool = True,
               poll_s: float = 2.0) -> list[Placement]:
    """Run ``points`` on the connected Ray cluster, one per node at a time; unpack each into ``out_dir/label``.

    Raises:
        SlmopsError: the cluster has no node with a CPU.
    """
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(run_point)
    queue = collections.deque((label, params, 1, ()) for label, params in points)
    running: dict = {}  # object ref -> (label, params, attempt, lost, node id)
    placements: dict[str, Placement] = {}
    while queue or running:
        nodes = _nodes()
        if not nodes and not running:
            raise SlmopsError("The Ray cluster has no live node with a CPU; start one with `ray start`.")
        busy = {entry[4] for entry in running.values()}
        for node_id, node in nodes.items():
            if not queue:
                break
            if node_id in busy:
                continue
            label, params, attempt, lost = queue.popleft()
            ref = task.options(num_cpus=node.cpus, max_retries=0, name=f"slmops point {label}",
                               scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(
                label, params)
            running[ref] = (label, params, attempt, lost, node_id)
            if progress:
                log.info("[ray] %s: try %d on %s (%s, %d CPUs)", label, attempt, node.host, node_id[:8], node.cpus)
        done, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
        for ref in done:
            label, params, attempt, lost, node_id = running.pop(ref)
            node = nodes.get(node_id, NodeSlot("?", 0))
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task never returned
                if _lost(exc) and attempt < MAX_ATTEMPTS:
                    reason = f"try {attempt} on {node.host} ({node_id[:8]}) lost: {type(exc).__name__}"
                    if progress:
                        log.info("[ray] %s: %s; queued again", label, reason)
                    queue.appendleft((label, params, attempt + 1, (*lost, reason)))
                    continue
                placements[label] = Placement(label, f"FAILED: {type(exc).__name__}: {str(exc)[:300]}",
                                              node_id[:8], node.host, "?", node.cpus, attempt, 0.0, lost)
                continue
            _unpack(result.zip, label, out_dir)
            placements[label] = Placement(label, result.status, node_id[:8], result.host, result.cpu, node.cpus,
                                          attempt, result.wall_s, lost)
            if progress:
                log.info("[ray] %s: %s in %.0f s on %s", label, result.status[:120], result.wall_s, result.host)
    return [placements[label] for label, _ in points]


def run_sweep(params: dict, out: str | os.PathLike[str], *, address: str | None = None, progress: bool = True,
              max_runs: int = run_params.MAX_SWEEP_RUNS) -> Path:
    """:func:`slmops.toolkit.orchestration.pipeline.run_sweep` with each point a Ray task on its own node.

    Every point's parameters are checked before Ray starts. The comparison page says which
    node ran which point and warns when the points ran on different kinds of node.

    Args:
        params: The sweep's parameters (with ``sweep``).
        out: The sweep's folder.
        address: A Ray cluster to join (``HOST:PORT``); None starts a local Ray.
        progress: Print a line as each point starts and ends.
        max_runs: The most combinations a sweep may have.

    Raises:
        ParamsError: a bad parameter in any point (before anything runs).
        InputError: Ray is not installed or no cluster answers at ``address``.
        SlmopsError: after all points, when any failed.
    """
    run_params.parse_sweep(params.get("sweep"), max_runs=max_runs)
    runs = pipeline.sweep_runs(params)
    for label, run in runs:
        run_params.parse(run, source=f"sweep run {label}")
    # Paths are the driver's: a point runs elsewhere, so they are made absolute here.
    resolved = [(label, run_params.with_absolute_paths(run)) for label, run in runs]
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    connect(address)
    placements = run_points(resolved, out_dir, progress=progress)
    results = [(label, chosen, placement.status) for (label, chosen), placement in zip(runs, placements, strict=True)]
    write_placements(out_dir, placements)
    index = report.write_sweep_index(out_dir, results, swept=list(params["sweep"]), placements=placements)
    failed = [p.label for p in placements if p.status != "ok"]
    if failed:
        raise SlmopsError(f"{len(failed)} of {len(runs)} sweep runs failed ({', '.join(failed)}); see {index}")
    return index
