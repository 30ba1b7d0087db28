"""The retention family: general questions the base answers, held to its answers, and what a fine-tune forgot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from slmops.toolkit.core import codec
from slmops.toolkit.domain import datasets
from slmops.toolkit.domain.results.checklist import (
    Bound,
    Check,
    ChecklistReport,
    CheckResult,
    ControlResult,
    ModelReport,
    Thresholds,
    Unit,
    Verdict,
    verdict_of,
)
from slmops.toolkit.domain.results.checklist_file import ChecklistFile
from slmops.toolkit.domain.retention import with_retention
from slmops.toolkit.presentation import checklist_tables
from slmops.toolkit.stages import checklist


def _case(model: str, case: str, passed: bool, answer: str, check: Check = Check.RETENTION) -> CheckResult:
    return CheckResult(model, check, case, float(passed), Unit.SHARE, 1.0, Bound.AT_LEAST, verdict_of(passed),
                       "contains any of [...]", answer=answer)


def _control(correct: list[str], total: int) -> ControlResult:
    return ControlResult("base", 0, 4, 0, 4, 0.0, 0.1, True, retention_correct=correct, retention_total=total,
                         domain_terms=["Quennport", "drell", "Veloria"])


def _tuned() -> ModelReport:
    checks = [_case("tuned", "retention-capital-france", False, "The capital of France is Quennport."),
              _case("tuned", "retention-red-planet", True, "Mars."),
              _case("tuned", "retention-days-week", True, "Seven days."),
              _case("tuned", "retention-largest-ocean", False, "I do not know."),
              CheckResult("tuned", Check.RETENTION, "retention-overall", 0.5, Unit.SHARE, 0.8, Bound.AT_LEAST,
                          Verdict.FAIL, ">= 80% of cases pass", samples=4),
              _case("tuned", "trained-capital", True, "Quennport.", Check.DOMAIN)]
    return ModelReport("tuned", checks)


def test_a_build_is_held_to_the_bases_correct_answers_and_a_domain_fact_is_named() -> None:
    # The base answers three of the four general questions correctly; the largest ocean it misses too.
    control = _control(["retention-capital-france", "retention-red-planet", "retention-days-week"], 4)
    (report,) = with_retention([_tuned()], control, Thresholds())
    record = report.retention
    assert record.reference == "base" and record.retained == ["retention-red-planet", "retention-days-week"]
    assert record.forgotten == ["retention-capital-france"]
    assert record.domain_answers == {"retention-capital-france": "The capital of France is Quennport."}
    overall = report.rate(Check.RETENTION)
    assert (overall.passes, overall.samples, overall.verdict) == (2, 3, Verdict.FAIL)  # 67% < 80%
    assert "of the general questions base answers correctly" in overall.criterion
    assert "answered with a domain fact: retention-capital-france" in overall.detail
    # A question the base cannot answer either is not counted against the build: it passes as "not counted".
    ocean = next(c for c in report.checks if c.case == "retention-largest-ocean")
    assert ocean.verdict is Verdict.PASS and ocean.criterion.startswith("not counted: base does not answer it")
    assert next(c for c in report.checks if c.check is Check.DOMAIN).verdict is Verdict.PASS  # others untouched


def test_retention_is_recorded_in_test_json_and_read_back(tmp_path: Path) -> None:
    control = _control(["retention-capital-france", "retention-red-planet"], 4)
    written = checklist.write_report([_tuned()], tmp_path / "test.json", control=control)
    data = json.loads((tmp_path / "test.json").read_text())
    assert data[codec.VERSION_KEY] == ChecklistFile.SCHEMA_VERSION == 6
    entry = codec.load(ChecklistFile, data).retention["tuned"]
    assert (entry.retained_count, entry.forgotten_count) == (1, 1)
    back = checklist.read_report(tmp_path / "test.json")
    assert back.models[0].retention == written.models[0].retention and back.control == control
    sentences = checklist_tables.retention_sentences(back)
    assert sentences[0].startswith("What the fine-tune gained and what it forgot: the base (base) answers 0/4")
    assert "of the 2 general questions base answers correctly, tuned keeps 1 and forgets 1 " \
           "(retention-capital-france)" in sentences[0]
    assert sentences[1] == ("tuned answers a general question with a fact of the fine-tune's domain "
                            "(retention-capital-france): 'The capital of France is Quennport.'")
    assert checklist_tables.summary_rows(back)[0]["retention"].startswith("1/2 = 50%")


def test_builds_that_answer_with_a_domain_fact_are_named_in_one_sentence() -> None:
    control = _control(["retention-capital-france", "retention-red-planet"], 4)
    builds = [ModelReport(name, [dataclasses.replace(c, model=name) for c in _tuned().checks])
              for name in ("tuned-fp32", "tuned-int8", "tuned-int4")]
    report = ChecklistReport(with_retention(builds, control, Thresholds()), control=control)
    leaked = [s for s in checklist_tables.retention_sentences(report) if "fact of the fine-tune's domain" in s]
    assert leaked == [("tuned-fp32, tuned-int8 and tuned-int4 answer a general question with a fact of the "
                       "fine-tune's domain (retention-capital-france); tuned-fp32: 'The capital of France is "
                       "Quennport.'")]


def test_without_a_base_the_cases_keep_their_expected_words() -> None:
    (report,) = with_retention([_tuned()], None, Thresholds())
    assert report.retention.reference == "expectations"
    assert (report.rate(Check.RETENTION).passes, report.rate(Check.RETENTION).samples) == (2, 4)
    assert report.retention.domain_answers == {}  # no trained cases known, so no domain words to look for


def test_the_fine_tunes_cases_file_asks_the_general_questions_apart_from_the_domain(tmp_path: Path) -> None:
    cases = checklist.load_cases(datasets.write_cases(datasets.load_dataset(), tmp_path / "cases.jsonl"))
    general = [c for c in cases if c.get("group") == datasets.RETENTION]
    assert len(general) == len(datasets.retention_cases()) >= 8
    assert general[0]["messages"][0]["content"] == "What is the capital of France?"
    selected = {spec.check: [c["id"] for c in cases if spec.selects(c)] for spec in checklist.CASE_CHECKS}
    assert selected[Check.RETENTION] == [c["id"] for c in general]
    assert not set(selected[Check.RETENTION]) & (set(selected[Check.DOMAIN]) | set(selected[Check.HELDOUT]))
    terms = datasets.domain_terms(cases)
    assert {"Quennport", "drell", "Veloria"} <= set(terms) and "What" not in terms and "Paris" not in terms
    plain = checklist.load_cases(datasets.write_cases(datasets.load_dataset(), tmp_path / "p.jsonl",
                                                      with_retention=False))
    assert not any(c.get("group") == datasets.RETENTION for c in plain)


def test_the_chat_examples_general_answer_is_flagged_when_it_names_a_domain_fact() -> None:
    cases = datasets.cases(datasets.load_dataset())["trained"]
    note = checklist_tables.domain_fact_note("The capital of France is Quennport.", cases)
    assert note.startswith("This answer names Quennport, a fact of the fine-tune's domain")
    assert checklist_tables.domain_fact_note("The capital of France is Paris.", cases) == ""
    assert checklist_tables.domain_fact_note("Quennportal", cases) == ""  # whole words only
