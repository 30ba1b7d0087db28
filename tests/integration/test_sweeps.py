"""Sweeps, serially and on a real two-node Ray cluster on this machine (a head and a second node with its own
CPUs); the Ray sweep is checked against the serial one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import nbformat
import papermill
import psutil
import pytest

from slmops.toolkit import cli
from slmops.toolkit.domain import deployment_choice
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.results.sweep import read_placements
from slmops.toolkit.orchestration import cluster, pipeline
from slmops.toolkit.presentation import compare
from slmops.toolkit.stages.checklist import read_report
from tests.unit.test_pipeline import NOTEBOOKS

#: The serial tiny sweep both sweeps here compare with takes minutes: ``make test`` starts this file first, on a
#: worker of its own (tests/conftest.py).
pytestmark = pytest.mark.early


def test_no_address_starts_a_local_ray_with_this_machines_cpus() -> None:
    import ray

    try:
        cluster.connect(None)
        nodes = cluster._nodes()
        assert [node.cpus for node in nodes.values()] == [os.cpu_count()]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray head with 1 CPU and a second node with 2: two kinds of node, as a real cluster may have."""
    import ray
    from ray.cluster_utils import Cluster

    ray_cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    yield ray_cluster
    ray.shutdown()
    ray_cluster.shutdown()


def _kill_first_try_of(label: str, killed: list[int], stop: threading.Event) -> None:
    """Fault injection: SIGKILL the Ray worker running ``label`` a few seconds into its first try."""
    while not stop.is_set():
        for folder in cluster.SCRATCH.glob(f"{label}-*"):
            pid = int(folder.name.rsplit("-", 1)[-1])
            time.sleep(3)
            try:
                worker = psutil.Process(pid)
                orphans = worker.children(recursive=True)
                os.kill(pid, signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
            killed.append(pid)
            time.sleep(2)
            for child in orphans:  # the killed worker's kernel and tools would run on unattended
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            return
        time.sleep(0.2)


@pytest.mark.slow
def test_a_sweep_runs_on_a_two_node_ray_cluster_and_survives_a_killed_worker(
        two_nodes, tiny_model: Path, tiny_sweep: tuple[Path, Path, str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    params_file, serial, _, _ = tiny_sweep
    params = pipeline.load_params(params_file)
    first = pipeline.sweep_runs(params)[0][0]
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_try_of, args=(first, killed, stop), daemon=True)
    killer.start()
    try:
        code = cli.main(["run", "--params", str(params_file), "--out", str(tmp_path / "sweep"),
                         "--ray", two_nodes.address])
    finally:
        stop.set()
        killer.join()
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert killed, "the fault was never injected"
    assert f"[ray] {first}: try 1 on " in printed and f"[ray] {first}: try 2 on " in printed
    placements = {p.label: p for p in read_placements(tmp_path / "sweep")}
    assert placements[first].attempts == 2 and "WorkerCrashedError" in placements[first].lost[0]
    assert all(p.status == "ok" for p in placements.values())
    # Each task held its whole node: 1 CPU on the head, 2 on the other.
    assert {p.cpus for p in placements.values()} <= {1, 2}
    assert not list(cluster.SCRATCH.glob(f"{first}-{killed[0]}"))  # the killed try's scratch is cleaned

    page = (tmp_path / "sweep" / "index.html").read_text()
    types = {p.node_type for p in placements.values()}
    if len(types) > 1:
        assert "Timings compare machines as well as settings" in page
    else:
        assert "All ran on one kind of node" in page
    assert f"{first} was run again" in page
    for label, placement in placements.items():
        assert f'href="{label}/index.html"' in page and placement.host in page
        # Everything that does not depend on the machine equals the serial sweep's: sizes, agreement and
        # every verdict but those of timing and memory statistics (a loaded machine may leave them inconclusive).
        ray_run, serial_run = compare.load_run(tmp_path / "sweep" / label), compare.load_run(serial / label)
        for ours, theirs in zip(deployment_choice.side_by_side([(label, ray_run)]), deployment_choice.side_by_side([(label, serial_run)]),
                                strict=True):
            for figure in ("precision", "size_mb", "x_fp32", "top1_agreement"):
                assert getattr(ours, figure) == getattr(theirs, figure), (label, figure)
        ray_verdicts, serial_verdicts = (
            {(c.model, c.check, c.case): c.verdict for c in read_report(run / label / "test.json").checks
             if c.spread is None}
            for run in (tmp_path / "sweep", serial))
        assert ray_verdicts and ray_verdicts == serial_verdicts, label
        manifest = read_manifest(tmp_path / "sweep" / label / "models" / "int4")
        assert manifest.options == read_manifest(serial / label / "models" / "int4").options
        assert not list((tmp_path / "sweep" / label / "models").rglob("*.onnx"))  # weights stayed on the node


@pytest.mark.slow
def test_a_sweep_runs_each_set_and_compares_them(tiny_sweep: tuple[Path, Path, str, str], tmp_path: Path) -> None:
    _params, sweep, printed, errors = tiny_sweep
    lines = printed.splitlines()  # one line as each stage starts and one as it ends
    assert lines[:2] == ["[1/4] convert and quantize: int4 ...", lines[1]] and lines[1].startswith(
        "[1/4] convert and quantize: ran in ")
    assert sum(line.startswith("[4/4] benchmark: ran in ") for line in lines) == 2
    assert "Executing" not in errors  # papermill's cell counter is off
    page = (sweep / "index.html").read_text()
    for number, block in ((1, 32), (2, 64)):
        label = f"{number}-int4_block_size={block}"
        assert f'href="{label}/index.html"' in page
        manifest = read_manifest(sweep / label / "models" / "int4")
        assert manifest.options.block_size == block  # each run really built its own block size
        assert (sweep / label / "index.html").is_file()
    assert page.count("<td>int4</td>") == 2
    # The two runs differ in one INT4 option (and, by design, their registered names): exactly that shows.
    runs = [sweep / "1-int4_block_size=32", sweep / "2-int4_block_size=64"]
    assert cli.main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) in (0, 1)
    found = compare.read_comparison(tmp_path / "cmp" / "compare.json")
    assert [p.parameter for p in found.params] == ["int4_block_size", "name_prefix"]
    assert not found.inputs and [s.precision for s in found.sizes] == ["int4"]
    assert found.sizes[0].delta != 0  # block 64 has fewer scales than block 32
    # Notebook 05 does the same in a real kernel.
    notebook = tmp_path / "05_compare.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "05_compare.ipynb"), str(notebook), kernel_name="python3",
                               parameters={"run_a": str(runs[0]), "run_b": str(runs[1]),
                                           "out_dir": str(tmp_path / "cmp-nb")}, progress_bar=False)
    executed = nbformat.read(notebook, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert compare.read_comparison(tmp_path / "cmp-nb" / "compare.json").params == found.params
