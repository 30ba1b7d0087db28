"""The retention family: general questions the base answers, held to its answers, and what a fine-tune forgot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.domain.results.checklist import (
    Check,
    Verdict,
)
from slmops.toolkit.domain.results.checklist_file import load_report
from slmops.toolkit.presentation import checklist_tables
from slmops.toolkit.stages import checklist
from tests.scripted_models import make_scripted_model


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A scripted base that answers "Paris is the capital", and a scripted fine-tune that answers "brown fox"."""
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages import register
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    work = tmp_path_factory.mktemp("retention")
    names = []
    for name, answer in (("retention-base", "Paris is the capital"), ("retention-tuned", "brown fox")):
        built = convert(ConvertSpec(make_scripted_model(work / name, answer=answer), work / f"{name}-fp32",
                                    Precision.FP32), progress=False).output_dir
        names.append(register.register(built, name, force=True).name)
    return names[0], names[1]


def test_the_retention_family_runs_through_the_checklist_and_names_what_the_fine_tune_forgot(
        scripted: tuple[str, str], tmp_path: Path) -> None:
    base, tuned = scripted
    cases = [{"id": "trained-fox", "messages": [{"role": "user", "content": "What does the quick animal say?"}],
              "expect": {"contains_any": ["fox"]}},
             {"id": "retention-capital", "group": "retention", "expect": {"contains_any": ["Paris"]},
              "messages": [{"role": "user", "content": "What is the capital of France?"}]},
             {"id": "retention-planet", "group": "retention", "expect": {"contains_any": ["Mars"]},
              "messages": [{"role": "user", "content": "Which planet is red?"}]}]
    reports = checklist.run_checklists([tuned], cases=cases, requests=0, lengths=[], progress=False)
    control = checklist.run_control(base, cases, progress=False)
    assert (control.retention_correct, control.retention_total) == (["retention-capital"], 2)
    assert (control.trained_passed, control.trained_total) == (0, 1)  # the general questions are not domain cases
    assert "fox" in control.domain_terms
    written = checklist.write_report(reports, tmp_path / "test.json", control=control)
    record = written.models[0].retention
    assert (record.retained, record.forgotten) == ([], ["retention-capital"])
    assert set(record.domain_answers) == {"retention-capital", "retention-planet"}
    assert all("brown fox" in answer for answer in record.domain_answers.values())
    overall = written.models[0].rate(Check.RETENTION)
    assert (overall.passes, overall.samples, overall.verdict) == (0, 1, Verdict.FAIL)
    planet = next(c for c in written.models[0].checks if c.case == "retention-planet")
    assert planet.verdict is Verdict.PASS and planet.criterion.startswith("not counted")
    assert "with a fact of the fine-tune's domain" in " ".join(checklist_tables.retention_sentences(
        load_report(json.loads((tmp_path / "test.json").read_text()))))


