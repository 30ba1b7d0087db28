"""Crash safety of ``report --zip``: killed before it lands, or onto a full disk, it keeps the earlier archive
and says what it left out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import artifacts

SLMOPS = [sys.executable, "-m", "slmops.toolkit.cli"]


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
