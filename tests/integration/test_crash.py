"""Crash safety: kill -9 at many points of convert, register and `report --zip`, and a full disk,
leave every earlier result intact; the next run cleans what the dead process left."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.core.errors import DiskFullError
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages import convert, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_catalog import CatalogEntry
from tests.unit.test_crash import SLMOPS, debris, run_until_killed


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (names starting with '.' included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished int4 build: the 'earlier result' every crash must leave alone."""
    out = tmp_path_factory.mktemp("crash") / "int4"
    convert.convert(ConvertSpec(tiny_model, out), progress=False)
    return out


@pytest.mark.parametrize("point", ["write:manifest.json", "convert-built", "swap-aside", "swap-in-place"])
def test_a_conversion_killed_at_any_point_keeps_the_earlier_build(built: Path, tiny_model: Path, point: str) -> None:
    before = digest(built)
    done = run_until_killed(["convert", str(tiny_model), "--recipe", "compact", "--out", str(built)], crash_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    if point == "swap-in-place":  # killed after the new build was complete and in place: it is the result
        assert read_manifest(built).options.algorithm == "rtn"
    elif point == "swap-aside":  # the earlier build was moved aside: the next run puts it back
        assert not built.exists()
    else:
        assert digest(built) == before
    assert debris(built.parent)  # the dead process's scratch is there...
    artifacts.remove_stale(built.parent)
    assert not debris(built.parent)  # ...and the next run removes it, putting back what was moved aside
    if point != "swap-in-place":
        assert digest(built) == before
    convert.convert(ConvertSpec(tiny_model, built), progress=False)  # and converting again works


@pytest.mark.parametrize("after_s", [1.0, 3.0])
def test_a_conversion_killed_at_a_random_moment_keeps_the_earlier_build_and_its_children_die(
        built: Path, tiny_model: Path, after_s: float) -> None:
    before = digest(built)
    done = run_until_killed(["convert", str(tiny_model), "--precision", "int8", "--out", str(built)], after_s=after_s)
    if done.returncode == 0:  # finished before the kill: a complete new build
        assert read_manifest(built).precision == "int8"
    else:
        assert digest(built) == before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the builder and quantizer children die with their parent
        orphans = [p for p in psutil.process_iter(["cmdline"])
                   if str(built.parent) in " ".join(p.info["cmdline"] or [])]
        if not orphans:
            break
        time.sleep(0.2)
    assert not orphans, [p.info["cmdline"] for p in orphans]
    convert.convert(ConvertSpec(tiny_model, built), progress=False)
    assert not debris(built.parent)  # the new conversion cleaned up after the dead one


@pytest.mark.parametrize("point", ["write:.slmops-registration.json", "swap-aside", "swap-in-place",
                                   "register-catalog"])
def test_a_registration_killed_at_any_point_keeps_the_earlier_one(tiny_int4: Path, point: str) -> None:
    name = f"crashy-{point.replace(':', '-').replace('.', '')}"
    register.register(tiny_int4, name, version=1)
    folder = models_root() / name
    before = digest(folder)
    done = run_until_killed(["register", str(tiny_int4), "--name", name, "--temperature", "0.2"], crash_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    # Any later use of the cache recovers: here `slmops ls` in a new process.
    listed = subprocess.run([*SLMOPS, "ls", "--json"], capture_output=True, text=True, check=True)
    row = next(r for r in codec.load(list[CatalogEntry], json.loads(listed.stdout)) if r.name == name)
    assert row.registered and row.folder
    assert not debris(models_root())
    if point == "swap-in-place" or point == "register-catalog":  # the new, complete folder is the result
        assert json.loads((folder / "inference_model.json").read_text())["ModelConfig"]["temperature"] == 0.2
    else:
        assert digest(folder) == before


def test_a_registration_onto_a_full_disk_is_a_clear_error_and_changes_nothing(
        tiny_int4: Path, small_disk: Path) -> None:
    """The disk holds an earlier registration and too little room for this model's files."""
    cache = small_disk / "cache"
    root = cache / "models" / "custom"
    root.mkdir(parents=True)
    (root / "kept").mkdir()
    (root / "kept" / "marker.txt").write_text("an earlier registration")
    needed = artifacts.dir_size_mb(tiny_int4) * 1e6
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * int(free - needed / 2))
    with pytest.raises(DiskFullError, match="No space left"):
        register.register(tiny_int4, "too-big", cache=cache)
    assert sorted(os.listdir(root)) == ["kept"] and (root / "kept" / "marker.txt").read_text()
    assert sorted(os.listdir(small_disk)) == ["cache", "filler"]


def test_a_conversion_whose_disk_fills_while_writing_keeps_the_earlier_build(
        built: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection at the write layer: the manifest's write fails with ENOSPC."""
    before = digest(built)

    def no_space(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="manifest.json"):
        convert.convert(ConvertSpec(tiny_model, built), progress=False)
    assert digest(built) == before and not debris(built.parent)
