"""Stages 3 and 4 on a tiny model through the real Foundry Local runtime."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from toolkit import bench as B
from toolkit import evaluate as E
from toolkit import register as R
from toolkit.errors import SlmopsError


@pytest.mark.parametrize(
    ("answer", "expect", "passed"),
    [
        ("It is Paris.", {"contains_any": ["paris"]}, True),
        ("It is Lyon.", {"contains_any": ["Paris"]}, False),
        ("ok <|im_end|>", {"not_contains": ["<|im_end|>"]}, False),
        ('{"a": 1}', {"regex": r"^\{.*\}$"}, True),
        ("x" * 11, {"max_chars": 10}, False),
    ],
)
def test_judge(answer: str, expect: dict, passed: bool) -> None:
    assert E.judge(answer, expect)[0] is passed


def test_bundled_cases_load_and_bad_files_say_why(tmp_path: Path) -> None:
    cases = E.load_cases()
    assert len(cases) >= 5 and all(c["messages"] for c in cases)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(SlmopsError, match="bad.jsonl:1"):
        E.load_cases(bad)
    with pytest.raises(SlmopsError, match="No cases file"):
        E.load_cases(tmp_path / "missing.jsonl")


def test_checklist_on_a_random_model(tiny_int4: Path, tmp_path: Path) -> None:
    R.register(tiny_int4, "tiny-test")
    cases = [{"id": "c1", "messages": [{"role": "user", "content": "capital of France"}],
              "expect": {"contains_any": ["Paris"]}}]
    results = E.run_checklist("tiny-test", cases=cases, max_tokens=4)
    by_case = {r.case: r for r in results}
    assert by_case["c1"].passed is False  # random weights do not know Paris
    assert by_case["empty-prompt"].passed and "clear error" in by_case["empty-prompt"].value
    assert by_case["whitespace-prompt"].passed
    report = E.write_report(results, tmp_path / "test.json")
    assert report["passed"] is False
    assert json.loads((tmp_path / "test.json").read_text())["summary"]["tiny-test"] == {"passed": 2, "total": 3}


def test_bench_rows_and_files(tiny_int4: Path, tmp_path: Path) -> None:
    R.register(tiny_int4, "tiny-bench")
    rows = B.bench(["tiny-bench"], prompt_lengths=[16, 64], gen_tokens=8, repeats=2, warmup=1, progress=False)
    assert [r.target_prompt_tokens for r in rows] == [16, 64]
    # Cut text re-tokenizes within a token or two of the asked length.
    assert [abs(r.prompt_tokens - want) <= 2 for r, want in zip(rows, [16, 64], strict=True)] == [True, True]
    for row in rows:
        assert row.precision == "int4" and row.engine == "foundry-local"
        assert row.decode_tps > 0 and row.ttft_ms > 0 and row.e2e_ms >= row.ttft_ms
        assert 20 < row.peak_rss_mb < 4000 and row.size_mb > 0 and row.repeats == 2
    report = B.write_results(rows, tmp_path)
    assert report["metadata"]["versions"]["foundry-local-sdk"] == "2.2.1"
    with (tmp_path / "bench.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2


def test_bench_rejects_bad_settings() -> None:
    with pytest.raises(SlmopsError, match="repeats"):
        B.bench(["x"], repeats=0)
