"""The pure parts of benchmarks/llama_cpp.py (no llama.cpp, no model): parameters, bits per weight, metric, table."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "llama_cpp.py"
_SPEC = importlib.util.spec_from_file_location("llama_cpp_bench", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_parameters_are_counted_from_the_safetensors_headers(tmp_path):
    _safetensors(tmp_path / "model-00001-of-00002.safetensors", {"embed": [10, 4], "norm": [4]})
    _safetensors(tmp_path / "model-00002-of-00002.safetensors", {"scalar": [], "w": [3, 2, 2]})
    assert bench.safetensors_parameters(tmp_path) == 40 + 4 + 1 + 12
    with pytest.raises(FileNotFoundError):
        bench.safetensors_parameters(tmp_path / "missing")


def test_bits_per_weight_is_file_bits_over_parameters():
    # The issue's Q4_K_M: 105.4 MB for SmolLM2's 134,515,008 parameters is 6.27 bits per weight.
    assert bench.bits_per_weight(105_400_000, 134_515_008) == pytest.approx(6.27, abs=0.005)
    assert bench.bits_per_weight(4 * 1000, 1000) == 32


def test_agreement_figures_match_the_projects_formula():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=12)
    reference = rng.standard_normal((12, 7))
    same = bench.agreement_figures(ids, reference, reference.astype(np.float32))
    assert same["top1_agreement"] == 1.0 and same["kl_divergence"] == pytest.approx(0, abs=1e-5) and same["tokens"] == 12
    shifted = bench.agreement_figures(ids, reference, reference + rng.standard_normal((12, 7)))
    assert 0 <= shifted["top1_agreement"] < 1 and shifted["kl_divergence"] > 0
    # KL of two explicit distributions (the same at both positions): p = (0.5, 0.5), q = (0.25, 0.75).
    one = bench.agreement_figures(np.array([0, 1]), np.log([[0.5, 0.5]] * 2), np.log([[0.25, 0.75]] * 2))
    assert one["perplexity"] == pytest.approx(1 / 0.75, abs=1e-3)
    assert one["kl_divergence"] == pytest.approx(round(0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75), 5))
    with pytest.raises(ValueError):
        bench.agreement_figures(ids, reference, reference[:, :6])


def test_runs_are_summarized_by_medians():
    runs = [{"ttft_s": t, "total_s": t + 1.27, "gen_tokens": 128} for t in (0.3, 0.5, 0.4)]
    summary = bench.summarize_runs(runs)
    assert summary == {"ttft_ms": 400.0, "decode_tps": 100.0, "runs": 3}


def test_builds_are_interleaved_and_the_order_reverses():
    assert bench.interleaved_order(["a", "b", "c"], ["x", "y"], 0) == ["a", "x", "b", "y", "c"]
    assert bench.interleaved_order(["a", "b", "c"], ["x", "y"], 1) == ["c", "y", "b", "x", "a"]


ROWS = [
    {"build": "ours INT4 (builder default)", "kind": "int4", "engine": "onnxruntime-genai", "size_mb": 203.3,
     "bpw": 12.09, "top1_agreement": 0.70, "kl_divergence": 0.4, "ttft_ms": 392.0, "decode_tps": 104.0},
    {"build": "ours recipe mixed", "kind": "int4", "engine": "onnxruntime-genai", "size_mb": 100.0, "bpw": 6.0,
     "top1_agreement": 0.95, "kl_divergence": 0.05, "ttft_ms": None, "decode_tps": None},
    {"build": "ours INT8", "kind": "int8", "engine": "onnxruntime-genai", "size_mb": 151.0, "bpw": 9.14,
     "top1_agreement": 0.97, "kl_divergence": 0.004, "ttft_ms": 485.0, "decode_tps": 78.5},
    {"build": "llama.cpp Q4_0", "kind": "Q4_0", "engine": "llama.cpp", "size_mb": 92.0, "bpw": 5.46, "top1_agreement": 0.754,
     "kl_divergence": 0.315, "ttft_ms": 274.0, "decode_tps": 112.0},
    {"build": "llama.cpp Q4_K_M", "kind": "Q4_K_M", "engine": "llama.cpp", "size_mb": 105.4, "bpw": 6.27,
     "top1_agreement": 0.915, "kl_divergence": 0.061, "ttft_ms": 432.0, "decode_tps": 74.0},
]


def test_the_table_puts_each_build_beside_its_llama_cpp_counterpart():
    lines = bench.table(ROWS)
    assert lines[0].startswith("| build |") and len(lines) == 2 + len(ROWS)
    int4 = lines[2].split(" | ")
    assert int4[-3:] == ["Q4_0", "1.43", "0.93 |"]  # 392/274, 104/112
    untimed = lines[3].split(" | ")
    assert untimed[5:7] == ["-", "-"] and untimed[-2:] == ["-", "- |"]
    assert lines[4].split(" | ")[-3] == "-"  # no Q8_0 row: no counterpart
    assert lines[5].split(" | ")[-3:] == ["-", "-", "- |"]  # llama.cpp rows are the baselines


def test_targets_follow_the_issues():
    goals = bench.targets(ROWS)
    speed = [g for g in goals if g["issue"] == 29]
    assert len(speed) == 1 and speed[0]["met"] is False and "1.431x" in speed[0]["measured"]
    quality = {g["target"].split(":")[0]: g["met"] for g in goals if g["issue"] == 25}
    assert quality == {"ours INT4 (builder default)": False, "ours recipe mixed": True}


def test_the_llama_cpp_build_names_its_instruction_sets_and_leaves_amx_out() -> None:
    # A -march=native build crashed in its first quantized decode on a virtual machine that reports AMX.
    avx512 = bench.isa_cmake_args({"avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"})
    assert "-DGGML_NATIVE=OFF" in avx512 and "-DGGML_AVX512_VNNI=ON" in avx512 and "AMX" not in avx512
    avx2 = bench.isa_cmake_args({"avx", "avx2", "fma", "f16c"})
    assert "-DGGML_AVX2=ON" in avx2 and "AVX512" not in avx2  # never an instruction the CPU lacks
