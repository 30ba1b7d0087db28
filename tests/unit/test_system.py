"""The system module (what differs between operating systems): Linux for real, macOS and Windows by simulation (sys.platform and modules patched)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import psutil
import pytest

from slmops.toolkit.core import measure, settings, system

_MIB = 1 << 20


@pytest.fixture(params=["linux", "darwin", "win32"])
def os_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "platform", request.param)
    return request.param


def _no_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource raises ImportError, as on Windows


def test_the_system_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, expected in (("linux", "linux"), ("darwin", "macos"), ("win32", "windows"), ("sunos5", "other")):
        monkeypatch.setattr(sys, "platform", name)
        assert system.current() == expected


def test_peak_rss_uses_each_systems_units(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda _: types.SimpleNamespace(ru_maxrss=2 * _MIB))
    monkeypatch.setitem(sys.modules, "resource", fake)
    monkeypatch.setattr(sys, "platform", "linux")
    assert system.peak_rss_mib() == 2048.0  # KiB
    monkeypatch.setattr(sys, "platform", "darwin")
    assert system.peak_rss_mib() == 2.0  # bytes


def test_peak_rss_on_windows_is_psutils_peak_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    _no_resource(monkeypatch)
    info = types.SimpleNamespace(rss=1 * _MIB, peak_wset=300 * _MIB)
    monkeypatch.setattr(psutil.Process, "memory_info", lambda self: info)
    assert system.peak_rss_mib() == 300.0
    assert measure.peak_rss_mib() == 300.0


def test_a_cgroup_limit_counts_on_linux_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text(str(1 << 29))
    monkeypatch.setattr(system, "CGROUP_DIR", tmp_path)
    monkeypatch.setattr(sys, "platform", "linux")
    assert system.memory_limit_left_bytes() == 1 << 29
    assert measure.available_mib() <= 512
    (tmp_path / "memory.max").write_text("max\n")
    assert system.memory_limit_left_bytes() is None
    (tmp_path / "memory.max").write_text("1073741824\n")
    for other in ("darwin", "win32"):
        monkeypatch.setattr(sys, "platform", other)
        assert system.memory_limit_left_bytes() is None
        assert measure.available_mib() > 0


def test_cpu_model_flags_and_caches_per_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n")
    cache = tmp_path / "cache" / "index0"
    cache.mkdir(parents=True)
    (cache / "level").write_text("1\n"), (cache / "type").write_text("Data\n"), (cache / "size").write_text("48K\n")
    monkeypatch.setattr(system, "PROC_CPUINFO", cpuinfo)
    monkeypatch.setattr(system, "SYSFS_CPU_CACHE", tmp_path / "cache")
    monkeypatch.setattr(sys, "platform", "linux")
    assert system.cpu_model() == "Test CPU 9000"
    assert {"avx2", "avx512f"} <= system.cpu_flags()
    assert system.cache_sizes() == {"L1d": "48K"}

    sysctl = {"machdep.cpu.brand_string": "Apple M3", "machdep.cpu.features": "FPU SSE",
              "machdep.cpu.leaf7_features": "AVX2 AVX512F", "hw.l1dcachesize": "65536", "hw.l2cachesize": "4194304",
              "hw.l1icachesize": "", "hw.l3cachesize": "0"}
    monkeypatch.setattr(system, "_sysctl", lambda name: sysctl.get(name, ""))
    monkeypatch.setattr(sys, "platform", "darwin")
    assert system.cpu_model() == "Apple M3"
    assert {"avx2", "avx512f", "sse"} <= system.cpu_flags()
    assert system.cache_sizes() == {"L1d": "64K", "L2": "4096K"}

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(system._stdlib_platform, "processor", lambda: "Intel64 Family 6")
    assert system.cpu_model() == "Intel64 Family 6"
    assert system.cpu_flags() == set() and system.cache_sizes() == {}
    assert measure.machine()["cpu"] == "Intel64 Family 6"


def test_children_get_their_own_group_the_way_each_system_does_it(os_name: str) -> None:
    kwargs = system.own_group_kwargs()
    if os_name == "win32":
        assert kwargs == {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)}
    else:
        assert kwargs == {"start_new_session": True}


def test_windows_ends_the_childs_tree_through_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    calls = []

    class Fake:
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def children(self, recursive: bool) -> list:
            assert recursive
            return [Fake(self.pid + 1)]

        def terminate(self) -> None:
            calls.append(("terminate", self.pid))

        def kill(self) -> None:
            calls.append(("kill", self.pid))

    monkeypatch.setattr(system.psutil, "Process", Fake)
    monkeypatch.setattr(system.os, "killpg", lambda *_: pytest.fail("no process groups on Windows"), raising=False)
    proc = types.SimpleNamespace(pid=100)
    system.signal_group(proc)
    system.signal_group(proc, force=True)
    assert calls == [("terminate", 101), ("terminate", 100), ("kill", 101), ("kill", 100)]


@pytest.mark.skipif(sys.platform == "win32", reason="a real SIGTERM to a process group: POSIX only")
def test_a_real_child_group_is_ended_on_posix() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **system.own_group_kwargs())
    watch = system.ChildWatch(proc)
    system.signal_group(proc)
    while watch.poll() is None:
        pass
    assert proc.returncode == -15  # SIGTERM
    system.signal_group(proc, force=True)  # a group already gone is not an error


def test_a_childs_own_peak_memory_is_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "x = bytearray(120 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1"
    proc = subprocess.Popen([sys.executable, "-c", code])
    watch = system.ChildWatch(proc)
    while watch.poll() is None:
        pass
    assert proc.returncode == 0 and watch.peak_rss_mib > 120


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux folds the parent's peak into an exec'd child's")
def test_a_small_child_of_a_large_process_is_measured_at_its_own_size() -> None:
    """Linux gives an exec'd child its parent's peak as ``ru_maxrss``: a child of a test process (or a notebook's
    kernel) holding 600 MiB read 600 MiB, whatever it used itself."""
    held = bytearray(600 * 1024 * 1024)
    for i in range(0, len(held), 4096):
        held[i] = 1
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    watch = system.ChildWatch(proc)
    while watch.poll() is None:
        pass
    assert proc.returncode == 0 and watch.peak_rss_mib < 200
    del held


def test_windows_samples_a_childs_peak_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    peaks = iter([10 * _MIB, 50 * _MIB])
    monkeypatch.setattr(system.psutil, "Process",
                        lambda pid: types.SimpleNamespace(memory_info=lambda: types.SimpleNamespace(
                            rss=1, peak_wset=next(peaks))))
    codes = iter([None, 0])
    proc = types.SimpleNamespace(pid=7, poll=lambda: next(codes))
    watch = system.ChildWatch(proc)
    assert watch.poll() is None and watch.peak_rss_mib == 10
    assert watch.poll() == 0 and watch.peak_rss_mib == 50


def test_dying_with_the_parent_without_prctl_is_a_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr(system.threading, "Thread",
                        lambda target, name, daemon: types.SimpleNamespace(start=lambda: started.append(target)))
    exits = []
    monkeypatch.setattr(system.os, "_exit", exits.append)
    monkeypatch.setattr(system.time, "sleep", lambda _: None)
    alive = iter([True, False])
    monkeypatch.setattr(system.psutil, "pid_exists", lambda pid: next(alive))
    for name in ("darwin", "win32"):
        monkeypatch.setattr(sys, "platform", name)
        monkeypatch.setitem(sys.modules, "ctypes", None)  # prctl would fail: never reached
        system.die_with_parent(4242)
    assert len(started) == 2
    started[0]()  # parent alive once, then gone
    assert exits == [1]


def test_stop_signals_on_windows_are_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    handlers = {}
    monkeypatch.setattr(system.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(system.signal, "pthread_sigmask", lambda *_: pytest.fail("no signal mask on Windows"))
    system.block_stop_signals()
    assert system.signal.SIGINT in handlers
    handlers[system.signal.SIGINT]()
    system.wait_for_stop()  # returns: the event is set


def test_the_foundry_clis_cache_location_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    foundry_models = tmp_path / ".foundry" / "cache" / "models"
    foundry_models.mkdir(parents=True)
    # `foundry cache location` prints the models folder; registrations go to <cache>/models/custom.
    assert settings.cache_dir(foundry_models) == (tmp_path / ".foundry" / "cache").resolve()
    assert settings.cache_dir(tmp_path / "mine") == (tmp_path / "mine").resolve()
    monkeypatch.setenv("SLMOPS_CACHE_DIR", str(foundry_models))
    assert settings.cache_dir() == (tmp_path / ".foundry" / "cache").resolve()


def test_nothing_outside_the_platform_module_calls_linux_only_apis() -> None:
    root = Path(system.__file__).parents[2]
    needles = re.compile(r"\bimport (resource|fcntl)\b|prctl|/proc/|/sys/|killpg|wait4|start_new_session")
    offenders = [f"{path.relative_to(root)}: {found.group()}"
                 for package in ("toolkit", "widgets") for path in (root / package).rglob("*.py")
                 if path.name != "system.py" for found in needles.finditer(path.read_text())]
    assert offenders == []


@pytest.mark.skipif(system.current() is not system.System.LINUX, reason="glibc's allocator")
def test_the_mmap_threshold_fix_returns_freed_buffers_to_the_system() -> None:
    """Without it glibc keeps a freed 8 MiB buffer in its heap once a larger mapped block was freed (what the
    memory check read as a leak in some runs); with it the buffer goes back. Each in a fresh process."""
    script = textwrap.dedent("""
        import sys, psutil
        from slmops.toolkit.core import system
        if sys.argv[1] == "fixed":
            assert system.fix_mmap_threshold()
        process = psutil.Process()
        block = bytearray(16 << 20); del block  # mapped, then freed: glibc raises its threshold to 16 MiB
        before = process.memory_info().rss
        block = bytearray(8 << 20); del block  # the size of the bundled model's logits per request
        print((process.memory_info().rss - before) / 2**20)
    """)
    kept = {how: float(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                                      check=True).stdout) for how in ("default", "fixed")}
    assert kept["default"] > 7 and abs(kept["fixed"]) < 1, kept


@pytest.mark.skipif(system.current() is not system.System.LINUX, reason="glibc's allocator")
def test_releasing_free_memory_returns_a_fragmented_heaps_free_pages() -> None:
    """Freed small blocks between live ones stay resident (RSS counts them) until the heap is trimmed."""
    script = textwrap.dedent("""
        import sys, psutil
        from slmops.toolkit.core import system
        process = psutil.Process()
        blocks = [bytearray(4000) for _ in range(20000)]  # 80 MB of small blocks from the heap
        kept = blocks[::50]; del blocks  # a live block every 200 kB: the heap cannot shrink from its top
        before = process.memory_info().rss
        if sys.argv[1] == "released":
            assert system.release_free_memory()
        print((before - process.memory_info().rss) / 2**20)
    """)
    returned = {how: float(subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                                          check=True).stdout) for how in ("default", "released")}
    assert returned["default"] < 1 and returned["released"] > 40, returned
