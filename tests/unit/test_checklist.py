"""Stage 3, the checklist, without a model: answers judged by their case's rules, the bundled cases read and bad
files refused, memory growth fitted, perplexity reported but never decisive."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.stages import checklist

SCHEMA = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("answer", "expect", "passed"),
    [
        ("It is Paris.", {"contains_any": ["paris"]}, True),
        ("It is Lyon.", {"contains_any": ["Paris"]}, False),
        ("ok <|im_end|>", {"not_contains": ["<|im_end|>"]}, False),
        # The three word rules ignore case alike: "Paris" is a "paris" that not_contains forbids.
        ("The capital is Paris.", {"not_contains": ["paris"]}, False),
        ("The capital is Lyon.", {"not_contains": ["paris"]}, True),
        ("42", {"exact": "42 "}, True),
        ('{"a": 1}', {"regex": r"^\{.*\}$"}, True),
        ("x" * 11, {"max_chars": 10}, False),
        ("Paris and Berlin", {"contains": ["paris", "berlin"]}, True),
        ("Paris", {"contains": ["Paris", "Berlin"]}, False),
        (" 42\n", {"exact": "42"}, True),
        ("42.", {"exact": "42"}, False),
        ('Sure: ```json\n{"name": "Ana", "age": 30}\n```', {"json_schema": SCHEMA}, True),
        ('{"name": "Ana", "age": "thirty"}', {"json_schema": SCHEMA}, False),
        ("no json here", {"json_schema": SCHEMA}, False),
    ],
)
def test_judge(answer: str, expect: dict, passed: bool) -> None:
    assert checklist.judge(answer, expect)[0] is passed


def test_bundled_cases_load_and_bad_files_say_why(tmp_path: Path) -> None:
    cases = checklist.load_cases()
    assert len(cases) >= 5 and all(c["messages"] for c in cases)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(SlmopsError, match="bad.jsonl:1"):
        checklist.load_cases(bad)
    with pytest.raises(SlmopsError, match="No cases file"):
        checklist.load_cases(tmp_path / "missing.jsonl")


def test_scores_and_growth_fit() -> None:
    assert checklist.judge("Paris", {"contains_any": ["Paris"], "exact": "Lyon"}) == (
        False, "contains any of [Paris]; is exactly 'Lyon'", 0.5)
    flat_after_warmup = [300.0] * 20 + [700.0, 500.0] * 10 + [690.0] * 60
    assert abs(checklist.growth_mib_per_100(flat_after_warmup)) < 0.5
    assert checklist.growth_mib_per_100([100 + 0.1 * i for i in range(100)]) == pytest.approx(10.0)
    assert checklist.input_lengths(512) == [64, 256]


def test_perplexity_on_the_generic_text_informs_but_never_fails_a_build() -> None:
    """Gemma 3's INT4 kept every domain answer at KL 0.45 yet read 2.7x its FP32's perplexity: it lost on that alone."""
    from slmops.toolkit.domain.results.checklist import QualityRecord, Thresholds
    from slmops.toolkit.stages.checklist import quality_checks

    checks = quality_checks("gemma3-int4", QualityRecord("gemma3-fp32", 0.7441, 0.45323, 499.89, 183.35, 426),
                            Thresholds())
    assert [c.case for c in checks] == ["top1-agreement", "kl-divergence"] and all(c.passed for c in checks)
    assert "2.73x the reference's 183.35 (information only)" in checks[1].detail
    far = quality_checks("m", QualityRecord("ref", 0.3, 1.2, 11.0, 10.0, 300), Thresholds())
    assert [c.passed for c in far] == [False, False]  # distance to FP32 still decides
