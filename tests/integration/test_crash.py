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
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import DiskFullError
from slmops.toolkit.runtimes.foundry import models_root
from slmops.toolkit.stages import convert as C
from slmops.toolkit.stages import register as R

SLMOPS = [sys.executable, "-m", "slmops.toolkit.cli"]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash (names starting with '.' included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if artifacts._SCRATCH.match(p.name))


def run_until_killed(args: list[str], *, crash_at: str = "", after_s: float = 0.0) -> subprocess.CompletedProcess:
    """Run ``slmops ARGS`` and kill it with SIGKILL at a crash point or after ``after_s`` seconds."""
    env = {**os.environ, "SLMOPS_CRASH_AT": crash_at}
    proc = subprocess.Popen([*SLMOPS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if after_s:
        time.sleep(after_s)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def built(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished int4 build: the 'earlier result' every crash must leave alone."""
    out = tmp_path_factory.mktemp("crash") / "int4"
    C.convert(C.ConvertSpec(tiny_model, out), progress=False)
    return out


@pytest.mark.parametrize("point", ["write:manifest.json", "convert-built", "swap-aside", "swap-in-place"])
def test_a_conversion_killed_at_any_point_keeps_the_earlier_build(built: Path, tiny_model: Path, point: str) -> None:
    before = digest(built)
    done = run_until_killed(["convert", str(tiny_model), "--recipe", "compact", "--out", str(built)], crash_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    if point == "swap-in-place":  # killed after the new build was complete and in place: it is the result
        assert json.loads((built / "manifest.json").read_text())["options"]["algorithm"] == "rtn"
    elif point == "swap-aside":  # the earlier build was moved aside: the next run puts it back
        assert not built.exists()
    else:
        assert digest(built) == before
    assert debris(built.parent)  # the dead process's scratch is there...
    artifacts.remove_stale(built.parent)
    assert not debris(built.parent)  # ...and the next run removes it, putting back what was moved aside
    if point != "swap-in-place":
        assert digest(built) == before
    C.convert(C.ConvertSpec(tiny_model, built), progress=False)  # and converting again works


@pytest.mark.parametrize("after_s", [1.0, 3.0])
def test_a_conversion_killed_at_a_random_moment_keeps_the_earlier_build_and_its_children_die(
        built: Path, tiny_model: Path, after_s: float) -> None:
    before = digest(built)
    done = run_until_killed(["convert", str(tiny_model), "--precision", "int8", "--out", str(built)], after_s=after_s)
    if done.returncode == 0:  # finished before the kill: a complete new build
        assert json.loads((built / "manifest.json").read_text())["precision"] == "int8"
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
    C.convert(C.ConvertSpec(tiny_model, built), progress=False)
    assert not debris(built.parent)  # the new conversion cleaned up after the dead one


@pytest.mark.parametrize("point", ["write:.slmops-registration.json", "swap-aside", "swap-in-place",
                                   "register-catalog"])
def test_a_registration_killed_at_any_point_keeps_the_earlier_one(tiny_int4: Path, point: str) -> None:
    name = f"crashy-{point.replace(':', '-').replace('.', '')}"
    R.register(tiny_int4, name, version=1)
    folder = models_root() / name
    before = digest(folder)
    done = run_until_killed(["register", str(tiny_int4), "--name", name, "--temperature", "0.2"], crash_at=point)
    assert done.returncode == -signal.SIGKILL, done.stderr
    # Any later use of the cache recovers: here `slmops ls` in a new process.
    listed = subprocess.run([*SLMOPS, "ls", "--json"], capture_output=True, text=True, check=True)
    row = next(r for r in json.loads(listed.stdout) if r["name"] == name)
    assert row["registered"] and row["folder"]
    assert not debris(models_root())
    if point == "swap-in-place" or point == "register-catalog":  # the new, complete folder is the result
        assert json.loads((folder / "inference_model.json").read_text())["ModelConfig"]["temperature"] == 0.2
    else:
        assert digest(folder) == before


def test_a_zip_killed_before_it_lands_keeps_the_earlier_archive(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text("{}")
    (run / "bench.json").write_text(json.dumps({"rows": []}))
    assert cli.main(["report", str(run), "--zip"]) == 0
    before = (tmp_path / "run.zip").read_bytes()
    (run / "extra.txt").write_text("x" * 10_000)
    done = run_until_killed(["report", str(run), "--zip"], crash_at="write:run.zip")
    assert done.returncode == -signal.SIGKILL
    assert (tmp_path / "run.zip").read_bytes() == before and debris(tmp_path)
    assert cli.main(["report", str(run), "--zip"]) == 0
    assert not debris(tmp_path) and (tmp_path / "run.zip").read_bytes() != before


def test_a_zip_says_what_it_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights and links stay out of an archive; it used to leave them out without a word."""
    import zipfile

    run = tmp_path / "run"
    (run / "models" / "int4").mkdir(parents=True)
    (run / "params.json").write_text("{}")
    (run / "models" / "int4" / "model.onnx").write_bytes(b"w" * 2_000_000)
    (run / "secret").symlink_to("/etc/passwd")
    assert cli.main(["report", str(run), "--zip"]) == 0
    err = capsys.readouterr()
    said = err.out + err.err
    assert "Left out 1 model weight files (2 MB): --with-models adds them." in said
    assert "Left out 1 links (never followed into an archive): secret" in said
    names = zipfile.ZipFile(tmp_path / "run.zip").namelist()
    assert "run/params.json" in names and not any("model.onnx" in n or "secret" in n for n in names)


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


def test_a_zip_onto_a_full_disk_is_a_clear_error_and_keeps_the_earlier_archive(
        tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text("{}")
    target = small_disk / "run.zip"
    assert cli.main(["report", str(run), "--zip", "--out", str(small_disk)]) == 0
    before = target.read_bytes()
    (run / "noise.txt").write_bytes(os.urandom(2_000_000))  # does not compress: cannot fit 1 MiB
    capsys.readouterr()
    assert cli.main(["report", str(run), "--zip", "--out", str(small_disk)]) == 1
    err = capsys.readouterr().err
    assert "No space left" in err and "Free some disk space" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == before and sorted(os.listdir(small_disk)) == ["run.zip"]


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
        R.register(tiny_int4, "too-big", cache=cache)
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
        C.convert(C.ConvertSpec(tiny_model, built), progress=False)
    assert digest(built) == before and not debris(built.parent)
