"""Shared fixtures (a tiny random model, a temporary Foundry cache and toolkit home, a probe worker, a small
disk) and the tiers: ``tests/unit/`` is fast, everything else ``slow``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from slmops.toolkit.core import settings
from tests.models import make_tiny_model

#: The tiers are folders. ``tests/unit/``: the fast tier (``make test-fast``), tests that convert,
#: fine-tune, register or load no model and start no notebook, cluster, browser or venv.
#: ``tests/integration/``: everything else, marked ``slow`` here, so ``pytest -m "not slow"`` selects
#: the same tests as ``pytest tests/unit``; a test file anywhere else is ``slow`` too. The fixtures that
#: build a model (``tests/integration/conftest.py``) are not visible from ``tests/unit/``.
UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test outside :data:`UNIT` ``slow``; the files marked ``early`` go first.

    ``make test`` (``-n 2 --dist loadfile --no-loadscope-reorder``) gives each file to one worker, in
    this order: the ``early`` files each build an expensive fixture their tests share (the bundled
    model's fine-tune, a tiny sweep) and take minutes, so each starts at once, on a worker of its own.
    """
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("early") is None)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: torch in each (and in its children) computes on one thread,
    # since a thread waiting for a core the other worker holds stalls every operation (a fine-tune's
    # setup took 696 s on two threads, 263-304 s on one).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test talks to a temporary Foundry cache, never ~/.slmops/foundry."""
    cache = tmp_path_factory.mktemp("foundry-cache")
    os.environ["SLMOPS_CACHE_DIR"] = str(cache)
    settings.apply_offline_env()
    return cache


@pytest.fixture(scope="session")
def cache(_isolated_cache: Path) -> Path:
    return _isolated_cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2")


@pytest.fixture()
def slmops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary toolkit home (``SLMOPS_HOME``; children inherit it): merged adapters and logs go there."""
    home = tmp_path / "home"
    monkeypatch.setenv("SLMOPS_HOME", str(home))
    return home


#: A worker module for :func:`slmops.toolkit.core.workers.run_worker`: one task per way a child can end.
WORKER = '''
import os, time
from slmops.toolkit.core import workers
from slmops.toolkit.core.errors import InvalidOptionError, InvalidPromptError

def echo(payload, emit):
    for i in range(payload.get("events", 0)):
        emit({"i": i})
    return {"got": payload, "offline": os.environ.get("HF_HUB_OFFLINE")}

def refuse(payload, emit):
    raise InvalidPromptError("The prompt is empty: give the model some text to answer.")

def bad_option(payload, emit):
    raise InvalidOptionError("max_tokens", 0, "a whole number >= 1")

def segfault(payload, emit):
    import ctypes
    ctypes.string_at(0)

def crash(payload, emit):
    raise KeyError("deep inside")

def hang(payload, emit):
    emit({"started": True})
    time.sleep(60)

def die(payload, emit):
    emit({"case": "first"})
    os.kill(os.getpid(), 9)

if __name__ == "__main__":
    workers.serve({"echo": echo, "refuse": refuse, "crash": crash, "hang": hang, "die": die,
                   "bad_option": bad_option, "segfault": segfault})
'''


@pytest.fixture()
def worker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "probe_worker.py").write_text(WORKER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return "probe_worker"


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), so a write really runs out of space."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
