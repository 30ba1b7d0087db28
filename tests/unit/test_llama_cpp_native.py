"""benchmarks/llama_cpp_native.py without building anything: its cmake options and how it finds a working build."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "llama_cpp_native.py"
_SPEC = importlib.util.spec_from_file_location("llama_cpp_native_bench", _PATH)
native = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = native  # dataclasses look their module up
_SPEC.loader.exec_module(native)


def test_the_native_build_asks_for_the_machines_instruction_sets_and_builds_no_ui_and_no_curl():
    args = native.cmake_args(native.Flavor.NATIVE, {"avx512f", "amx_int8"})
    assert "-DGGML_NATIVE=ON" in args and "-DLLAMA_USE_PREBUILT_UI=OFF" in args and "-DLLAMA_CURL=OFF" in args
    assert not any("AVX" in a for a in args)  # -march=native decides


def test_the_portable_build_names_its_instruction_sets_and_leaves_amx_out():
    # A -march=native build crashed in its first quantized decode on a virtual machine that reports AMX.
    avx512 = native.cmake_args(native.Flavor.PORTABLE,
                               {"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"})
    assert "-DGGML_NATIVE=OFF" in avx512 and "-DGGML_AVX512_VNNI=ON" in avx512
    assert not any("AMX" in a for a in avx512)
    avx2 = native.cmake_args(native.Flavor.PORTABLE, {"avx", "avx2", "fma", "f16c"})
    assert "-DGGML_AVX2=ON" in avx2 and not any("AVX512" in a for a in avx2)  # never an instruction the CPU lacks


def _build(home: Path, flavor: str, probe_ok: bool, binaries: tuple[str, ...] = native.TARGETS) -> Path:
    folder = native.build_folder(native.Flavor(flavor), "9.9.9", home)
    (folder / "bin").mkdir(parents=True)
    for name in binaries:
        (folder / "bin" / name).write_text("")
    (folder / "build.json").write_text(json.dumps({"flavor": flavor, "cmake_args": ["-DGGML_NATIVE=ON"],
                                                   "probe_ok": probe_ok}))
    return folder


def test_nothing_is_found_before_setup(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMOPS_LLAMA_CPP_TOOLS", raising=False)
    assert native.find_tools("9.9.9", tmp_path) is None
    with pytest.raises(SystemExit, match="llama_cpp_native.py --setup"):
        native.require_tools("9.9.9", tmp_path)


def test_a_native_build_that_crashed_is_passed_over_for_the_portable_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMOPS_LLAMA_CPP_TOOLS", raising=False)
    _build(tmp_path, "native", probe_ok=False)
    assert native.find_tools("9.9.9", tmp_path) is None
    portable = _build(tmp_path, "portable", probe_ok=True)
    found = native.find_tools("9.9.9", tmp_path)
    assert found.flavor == "portable" and found.server == portable / "bin" / "llama-server"
    assert found.bench.parent == found.quantize.parent == portable / "bin"


def test_a_working_native_build_comes_first_unless_a_binary_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMOPS_LLAMA_CPP_TOOLS", raising=False)
    _build(tmp_path, "portable", probe_ok=True)
    native_folder = _build(tmp_path, "native", probe_ok=True, binaries=("llama-bench",))
    assert native.find_tools("9.9.9", tmp_path).flavor == "portable"
    for name in native.TARGETS[1:]:
        (native_folder / "bin" / name).write_text("")
    assert native.find_tools("9.9.9", tmp_path).flavor == "native"
    monkeypatch.setenv("SLMOPS_LLAMA_CPP_TOOLS", str(native.build_folder(native.Flavor.PORTABLE, "9.9.9", tmp_path)))
    assert native.find_tools("9.9.9", tmp_path).flavor == "portable"
