"""The core layer: the one child-process protocol, result files, measurements, text tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.toolkit.core import artifacts, child_failures, measure, workers
from slmops.toolkit.core.errors import InvalidPromptError, SlmopsError, ToolFailedError, ToolTimeoutError
from slmops.toolkit.presentation.tables import text_table


def test_a_worker_takes_json_in_and_gives_json_out_offline(worker_module: str) -> None:
    seen: list[dict] = []
    run = workers.run_worker(worker_module, "echo", {"events": 3, "x": [1, "é"]}, name="echo", on_event=seen.append)
    assert run.result == {"got": {"events": 3, "x": [1, "é"]}, "offline": "1"}
    assert seen == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert run.peak_rss_mib > 1 and run.wall_s > 0 and run.command[2] == "slmops.toolkit.core.workers"


def test_a_workers_own_error_arrives_in_one_line_without_its_traceback(worker_module: str) -> None:
    # Our own error keeps its class across the boundary, so its exit code (2: bad input) holds.
    with pytest.raises(InvalidPromptError) as refused:
        workers.run_worker(worker_module, "refuse", {}, name="the probe")
    assert str(refused.value).startswith("The prompt is empty") and refused.value.exit_code == 2
    assert "Traceback" not in str(refused.value)
    with pytest.raises(ToolFailedError, match="KeyError: 'deep inside'") as caught:
        workers.run_worker(worker_module, "crash", {}, name="the probe")
    assert "Traceback" not in str(caught.value) and "Traceback" in Path(caught.value.log_path).read_text()


def test_a_failed_child_leaves_no_scratch_folder_and_its_log_where_the_error_says(
        worker_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch, home = tmp_path / "tmp", tmp_path / "home"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("SLMOPS_HOME", str(home))
    monkeypatch.setattr(child_failures, "KEPT_LOGS", 2)
    logs = []
    for task, error in (("crash", ToolFailedError), ("die", ToolFailedError), ("hang", ToolTimeoutError)):
        with pytest.raises(error) as caught:
            workers.run_worker(worker_module, task, {}, name="the probe", idle_timeout=1, startup_s=5)
        logs.append(Path(caught.value.log_path))
        assert logs[-1].parent == home / "logs" and logs[-1].is_file() and str(logs[-1]) in str(caught.value)
        if task == "crash":
            assert "KeyError: 'deep inside'" in logs[-1].read_text()  # the child's own traceback
    with pytest.raises(InvalidPromptError):
        workers.run_worker(worker_module, "refuse", {}, name="the probe")
    assert list(scratch.iterdir()) == []  # every failure cleaned its scratch folder (they used to stay in /tmp)
    assert sorted(home.joinpath("logs").iterdir()) == sorted(logs[1:])  # the newest KEPT_LOGS are kept


def test_a_childs_typed_error_keeps_its_class_fields_and_exit_code(worker_module: str) -> None:
    from slmops.toolkit.core.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError) as refused:
        workers.run_worker(worker_module, "bad_option", {}, name="the probe")
    # exit_code is what the CLI exits with (2: bad input), as if it had been raised in this process.
    assert refused.value.exit_code == 2 and (refused.value.name, refused.value.value) == ("max_tokens", 0)
    assert str(refused.value).startswith("max_tokens")


def test_a_native_crash_in_a_child_leaves_its_stack_in_the_log(worker_module: str) -> None:
    with pytest.raises(ToolFailedError) as caught:
        workers.run_worker(worker_module, "segfault", {}, name="the probe")
    log = Path(caught.value.log_path).read_text()
    assert caught.value.returncode != 0 and "Fatal Python error: Segmentation fault" in log and "segfault" in log


def test_events_before_a_crash_reach_the_parent(worker_module: str) -> None:
    seen: list[dict] = []
    with pytest.raises(ToolFailedError, match="signal 9") as caught:
        workers.run_worker(worker_module, "die", {}, name="die", on_event=seen.append)
    assert seen == [{"case": "first"}] and caught.value.returncode == -9


def test_an_external_tool_failure_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "tool.log"
    with pytest.raises(ToolFailedError, match="exit code 3") as caught:
        workers.run_tool([sys.executable, "-c", "print('why it broke'); raise SystemExit(3)"], log_path=log,
                         name="tool")
    assert "why it broke" in str(caught.value) and caught.value.log_path == str(log)
    ok = workers.run_tool([sys.executable, "-c", "print('fine')"], log_path=log, name="tool")
    assert ok.result is None and "fine" in log.read_text()
    with pytest.raises(ToolTimeoutError):
        workers.run_tool([sys.executable, "-c", "import time; time.sleep(30)"], log_path=log, timeout=0.5)


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path: Path) -> None:
    target = artifacts.write_json(tmp_path / "r.json", {"v": 1})

    class Unwritable:
        pass

    with pytest.raises(TypeError):
        artifacts.write_json(target, {"v": Unwritable()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no partial file left behind


def test_a_failed_swap_puts_the_old_folder_back(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = artifacts.staging_dir(target)
    (staging / "new.txt").write_text("new")

    def refuse() -> None:
        raise RuntimeError("catalog said no")

    with pytest.raises(RuntimeError):
        artifacts.swap_into_place(staging, target, then=refuse)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    staging = artifacts.staging_dir(target)
    (staging / "new.txt").write_text("new")
    artifacts.swap_into_place(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"] and sorted(os.listdir(tmp_path)) == ["model"]


# The scratch each stage makes: a conversion, a registration, a fine-tune, a merge, a Ray node's unpacking,
# a child process's input and events.
@pytest.mark.parametrize("kind", ["building", "staging", "training", "merging", "unpacking", "working"])
def test_stale_scratch_of_dead_processes_is_removed_and_live_work_is_kept(tmp_path: Path, kind: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".int4.{kind}-{dead.pid}-abc"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 100)
    live = artifacts.staging_dir(tmp_path / "int4", kind)
    assert artifacts.remove_stale(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir()
    with pytest.raises(ValueError, match="remove_stale would never clean it"):
        artifacts.staging_dir(tmp_path / "int4", "scratch")


def test_result_files_that_are_not_json_or_utf8_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bench.json"
    bad.write_text('{"rows": [1, }')
    with pytest.raises(SlmopsError, match=r"bench.json is not valid JSON .*line 1"):
        artifacts.read_json(bad)
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(SlmopsError, match="not UTF-8"):
        artifacts.read_json(bad)
    assert artifacts.read_json(tmp_path / "missing.json", {"default": True}) == {"default": True}


def test_sizes_do_not_count_links(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"x" * 2_000_000)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"y" * 3_000_000)
    (tmp_path / "link.bin").symlink_to(outside)
    assert artifacts.dir_size_mb(tmp_path) == pytest.approx(2.0)
    outside.unlink()


def test_measurements_are_plausible() -> None:
    meter = measure.CpuMeter()
    meter.start()
    # About 0.3 s of work: over a few milliseconds one burst of another process can take the core.
    sum(i * i for i in range(3_000_000))
    cpu = meter.stop()
    # The process's share counts all its threads: in a full run, threads earlier tests left in this
    # process add theirs (111% was seen), up to every core of the machine.
    assert 20 < cpu.cpu_percent <= 100 * (os.cpu_count() or 1) + 10 and 0 <= cpu.system_cpu_percent <= 100
    assert 1 < measure.rss_mib() <= measure.peak_rss_mib() + 1
    info = measure.cpu_info()
    assert info.logical_cpus >= info.physical_cores >= 1 and info.cpu
    assert measure.versions()["foundry-local-sdk"] == "2.2.1"


def test_text_tables_align_numbers_right_and_text_left() -> None:
    out = text_table([{"name": "fp32", "mb": 517.0, "ok": True}, {"name": "int4", "mb": 9.25, "ok": False}],
                     [("name", "NAME"), ("mb", "SIZE MB", ".1f"), ("ok", "OK")])
    assert out.splitlines() == ["NAME  SIZE MB  OK", "fp32    517.0  yes", "int4      9.2  no"]


def test_a_cache_is_pruned_least_recently_used_first(tmp_path: Path) -> None:
    import os

    for age, name in enumerate(["new", "middle", "old"]):
        (tmp_path / f"{name}.npz").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"{name}.npz", (1000 - age, 1000 - age))
    (tmp_path / "other.txt").write_bytes(b"x" * 500)  # not an entry
    assert artifacts.prune_least_recent(tmp_path, "*.npz", 250) == [tmp_path / "old.npz"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["middle.npz", "new.npz", "other.txt"]
    assert artifacts.prune_least_recent(tmp_path, "*.npz", 250) == []  # under the limit: nothing more


def test_the_build_cache_keeps_whole_folders_and_drops_the_least_recently_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slmops.toolkit.core import build_cache

    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx.data").write_bytes(b"x" * 400_000)
    assert build_cache.lookup("builds", "k1") is None
    first = build_cache.store("builds", "k1", tmp_path / "a", max_mb=1.0)
    os.utime(first, (1000, 1000))
    build_cache.store("builds", "k2", tmp_path / "b", max_mb=1.0)
    assert build_cache.lookup("builds", "k1") == first  # used now: k2 is the least recent
    build_cache.store("builds", "k3", tmp_path / "c", max_mb=1.0)  # 1.2 MB with all three: one goes
    assert sorted(p.name for p in build_cache.folder("builds").iterdir()) == ["k1", "k3"]
    build_cache.copy_out(first, tmp_path / "out" / "int4")
    assert (tmp_path / "out" / "int4" / "model.onnx.data").stat().st_size == 400_000
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["int4"]  # no scratch left beside it
    assert build_cache.key_of("source", {"bits": 4}) != build_cache.key_of("source", {"bits": 8})
