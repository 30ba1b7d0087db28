"""The pure parts of benchmarks/llama_cpp.py (no llama.cpp, no model): parameters, bits per weight, metric,
llama-bench's output, per-round ratios, verdicts and tables."""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from slmops.toolkit.domain.results.bench import TimedRun

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "llama_cpp.py"
_SPEC = importlib.util.spec_from_file_location("llama_cpp_bench", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up
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


# One test of `llama-bench -o json` as the 0.3.36 sdist's llama-bench prints it (fields trimmed to those read and a few more).
_PP = {"cpu_info": "Intel(R) Xeon(R) Processor", "backends": "CPU", "model_type": "llama 256M Q4_0", "n_threads": 2,
       "n_prompt": 128, "n_gen": 0, "n_depth": 0, "avg_ns": 98_000_000, "stddev_ns": 19_000_000, "avg_ts": 1346.2,
       "stddev_ts": 246.0, "samples_ns": [76_000_000, 120_000_000], "samples_ts": [1684.2, 1066.7]}
_TG = {**_PP, "n_prompt": 0, "n_gen": 128, "n_depth": 128, "avg_ns": 1_880_000_000, "avg_ts": 75.0,
       "samples_ns": [1_280_000_000, 2_560_000_000], "samples_ts": [100.0, 50.0]}


def test_the_two_llama_bench_runs_measure_prefill_and_decode_after_the_prompt():
    pp, tg = bench.llama_bench_commands("/x/llama-bench", "/m/q4_0.gguf", 128, 64, 2, reps=3)
    assert pp[:3] == ["/x/llama-bench", "-m", "/m/q4_0.gguf"]
    flags = [dict(zip(c[3::2], c[4::2], strict=False)) for c in (pp, tg)]
    assert flags[0] == {"-p": "128", "-n": "0", "-d": "0", "-r": "3", "-t": "2", "-o": "json"}
    assert flags[1] == {"-p": "0", "-n": "64", "-d": "128", "-r": "3", "-t": "2", "-o": "json"}


def test_llama_bench_json_is_parsed_and_the_round_picks_its_two_tests():
    tests = bench.parse_llama_bench(json.dumps([_PP])) + bench.parse_llama_bench(json.dumps([_TG]))
    assert tests[0] == {"n_prompt": 128, "n_gen": 0, "n_depth": 0, "ms": [76.0, 120.0], "tps": [1684.2, 1066.7],
                        "threads": 2, "type": "llama 256M Q4_0"}
    # The round keeps each test's best repetition, not llama-bench's mean (98 ms, 75 tok/s) that a stall pulls.
    assert bench.llama_round(tests, 128, 128) == {"first_token_ms": 76.0, "decode_tps": 100.0}
    # A decode test at another depth (or prompt length) is not the one a round asks for.
    shallow = bench.parse_llama_bench(json.dumps([_PP, {**_TG, "n_depth": 0}]))
    with pytest.raises(ValueError, match="tg128 @ d128"):
        bench.llama_round(shallow, 128, 128)
    for bad in ("", "error: failed to load model", "[]", json.dumps([{"n_prompt": 1, "samples_ns": []}])):
        with pytest.raises(ValueError):
            bench.parse_llama_bench(bad)


def test_our_runs_become_the_rounds_best_first_token_ms_and_decode_tokens_per_second():
    # 127 tokens after the first in 1.27 s: 100 tok/s, as llama-bench's tg counts its steps.
    runs = [TimedRun(ttft_s=0.095, total_s=1.365, gen_tokens=128), TimedRun(ttft_s=0.3, total_s=2.84, gen_tokens=128),
            TimedRun(ttft_s=0.12, total_s=2.66, gen_tokens=128)]
    assert bench.ours_round(runs) == pytest.approx({"first_token_ms": 95.0, "decode_tps": 100.0})
    assert bench.ours_round(runs[1:]) == pytest.approx({"first_token_ms": 120.0, "decode_tps": 50.0})


def test_ratios_are_taken_per_round_and_the_verdicts_read_every_round():
    ours = [{"first_token_ms": f, "decode_tps": d} for f, d in ((95, 110), (90, 104), (100, 99))]
    theirs = [{"first_token_ms": f, "decode_tps": d} for f, d in ((76, 100), (90, 100), (80, 100))]
    result = bench.pair_result(ours, theirs)
    assert result["first_token_ratio"] == pytest.approx({"median": 1.25, "min": 1.0, "max": 1.25})
    assert result["first_token_verdict"] == "warn"  # one round meets 1.0x, two miss
    assert result["decode_ratio"]["median"] == pytest.approx(1.04) and result["decode_verdict"] == "warn"
    assert result["ours"]["first_token_ms"] == {"median": 95, "min": 90, "max": 100}
    assert bench.verdict([0.9, 1.0], 1.0, at_most=True) == "pass"
    assert bench.verdict([1.01, 1.3], 1.0, at_most=True) == "fail"
    assert bench.verdict([1.0, 1.2], 1.0, at_most=False) == "pass"
    assert bench.verdict([0.99], 1.0, at_most=False) == "fail"
    with pytest.raises(ValueError):
        bench.pair_result(ours, theirs[:2])


def test_the_rounds_alternate_their_order():
    assert bench.round_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert bench.round_order(["a", "b", "c"], 1) == ["c", "b", "a"]


def test_the_pairs_are_the_issues():
    assert [(p.folder, p.quant) for p in bench.pairs("mixed")] == [("int4", "Q4_0"), ("int8", "Q8_0"),
                                                                   ("recipes/mixed", "Q4_K_M")]


def test_the_speed_table_shows_medians_and_ranges():
    ours = [{"first_token_ms": 95.0, "decode_tps": 110.0}, {"first_token_ms": 97.0, "decode_tps": 108.0}]
    theirs = [{"first_token_ms": 76.0, "decode_tps": 100.0}, {"first_token_ms": 77.6, "decode_tps": 100.0}]
    lines = bench.speed_table({"ours INT4 (builder default)": {"quant": "Q4_0", **bench.pair_result(ours, theirs)}})
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert lines[0].startswith("| ours | llama.cpp |") and len(lines) == 3
    assert cells[:3] == ["ours INT4 (builder default)", "Q4_0", "96.0 / 76.8"]
    assert cells[3] == "1.25 (1.25-1.25)" and cells[5] == "1.09 (1.08-1.10)" and cells[6] == "fail, pass"


ROWS = [
    {"build": "ours INT4 (builder default)", "kind": "int4", "size_mb": 203.3, "bpw": 12.09,
     "top1_agreement": 0.70, "kl_divergence": 0.4},
    {"build": "ours INT4 recipe mixed", "kind": "int4", "size_mb": 100.0, "bpw": 6.0, "top1_agreement": 0.95,
     "kl_divergence": 0.05},
    {"build": "ours INT8", "kind": "int8", "size_mb": 151.0, "bpw": 9.14, "top1_agreement": 0.97,
     "kl_divergence": 0.004},
    {"build": "llama.cpp Q4_0", "kind": "Q4_0", "size_mb": 92.0, "bpw": 5.46},
    {"build": "llama.cpp Q4_K_M", "kind": "Q4_K_M", "size_mb": 105.4, "bpw": 6.27, "top1_agreement": 0.915,
     "kl_divergence": 0.061},
]


def test_the_quality_table_and_targets_follow_issue_25():
    lines = bench.quality_table(ROWS)
    assert len(lines) == 2 + len(ROWS)
    assert lines[5] == "| llama.cpp Q4_0 | 92.0 | 5.46 | - | - |"  # not measured: a dash, never a zero
    goals = {g["target"].split(":")[0]: g["verdict"] for g in bench.quality_targets(ROWS)}
    assert goals == {"ours INT4 (builder default)": "fail", "ours INT4 recipe mixed": "pass"}
    assert bench.quality_targets(ROWS[:3]) == []  # no Q4_K_M measured: no verdict


def test_the_machine_line_names_the_instruction_sets_that_decide_quantized_speed():
    assert bench.machine_isa({"avx2", "avx512f", "avx512_vnni", "amx_int8", "sse2"}) == [
        "avx2", "avx512f", "avx512_vnni", "amx_int8"]


def test_also_names_a_build_its_folder_and_its_llama_cpp_quant():
    assert bench.parse_also("ours INT4 b64=/m/a:b/int4:q4_0") == bench.Pair("ours INT4 b64", "/m/a:b/int4", "Q4_0")
    for bad in ("no-equals", "name=/folder-without-quant", "=/x:Q4_0", "n=:Q4_0"):
        with pytest.raises(ValueError, match="NAME=MODEL_DIR:QUANT"):
            bench.parse_also(bad)
