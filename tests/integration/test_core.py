"""The core layer: the one child-process protocol, result files, measurements, text tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from slmops.toolkit.core import workers
from slmops.toolkit.core.errors import ToolTimeoutError


def test_a_silent_worker_is_killed_at_its_idle_timeout(worker_module: str) -> None:
    seen: list[dict] = []
    start = time.monotonic()
    with pytest.raises(ToolTimeoutError, match="no progress within 1 s"):
        workers.run_worker(worker_module, "hang", {}, name="hang", idle_timeout=1, startup_s=5, on_event=seen.append)
    assert seen == [{"started": True}] and time.monotonic() - start < 30


def test_children_die_with_their_parent(tmp_path: Path, worker_module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A toolkit process killed with SIGKILL takes its worker with it (parent-death signal), and the
    scratch folder it could not remove is removed by the next child any process runs."""
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        from slmops.toolkit.core import workers
        workers.run_worker({worker_module!r}, "hang", {{}}, name="hang")
    """))
    parent = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy())
    deadline = time.monotonic() + 60
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and not children:
        children = psutil.Process(parent.pid).children()
        time.sleep(0.1)
    assert children, "the worker never started"
    child = children[0]
    time.sleep(1.0)  # let it reach its task
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, _ = psutil.wait_procs([child], timeout=10)
    assert gone, "the worker outlived its killed parent"
    scratch = tmp_path / "home" / "workers"
    left = [p.name for p in scratch.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".hang.working-{parent.pid}-")
    assert workers.run_worker(worker_module, "echo", {}, name="echo").result["got"] == {}
    assert list(scratch.iterdir()) == []
