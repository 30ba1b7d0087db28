"""Stage 3, the checklist, on a tiny model through the real Foundry Local runtime: every check runs, and a model
that crashes fails its edge cases while the checklist goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.domain.results.checklist_file import ChecklistFile, dump_report, load_report
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages import checklist, register


def test_checklist_on_a_random_model(tiny_model: Path, tiny_int4: Path, tmp_path: Path) -> None:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    fp32 = convert(ConvertSpec(tiny_model, tmp_path / "fp32", Precision.FP32), progress=False).output_dir
    register.register(fp32, "tiny-ref")
    register.register(tiny_int4, "tiny-test")
    cases = [{"id": "c1", "messages": [{"role": "user", "content": "capital of France"}],
              "expect": {"contains_any": ["Paris"], "max_chars": 10000}}]
    result = checklist.run_checklist("tiny-test", cases=cases, max_tokens=4, requests=12, lengths=[16, 64],
                             reference="tiny-ref", progress=False)
    by = {(c.check, c.case): c for c in result.checks}
    assert not by["domain", "c1"].passed and by["format", "c1"].passed  # content and structure apart
    assert not by["domain", "domain-overall"].passed
    assert len(result.rss_mib) >= 12 and by["memory", "rss-growth"].unit == "MiB per 100 requests"  # windows may be added
    assert sorted(result.ms_per_token) == [16, 64] and "performance" in {c.check for c in result.checks}
    edge = {case: by["edge", case] for case, _ in checklist.EDGE_CASES}
    assert all(c.passed for c in edge.values()), [c.detail for c in edge.values() if not c.passed]
    assert "PromptTooLongError" in edge["over-context"].detail and "InvalidOptionError" in edge["max-tokens-0"].detail
    assert "(1 tokens" in edge["max-tokens-1"].detail and all(c.value < c.threshold for c in edge.values())
    assert {case for check, case in by if check == "quality"} == {"top1-agreement", "kl-divergence"}
    assert "perplexity" in by["quality", "kl-divergence"].detail  # information, not a verdict
    quality = result.quality
    assert quality is not None and by["quality", "top1-agreement"].value == quality.top1_agreement
    report = dump_report(checklist.write_report([result], tmp_path / "test.json"))
    written = codec.read(ChecklistFile, tmp_path / "test.json")  # the file as written: its summary and series
    assert written.passed is False and "domain/c1" in written.summary["tiny-test"].failed
    assert written.series["tiny-test"].rss_mib == result.rss_mib
    assert checklist.read_report(tmp_path / "test.json") == load_report(report)


@pytest.mark.slow
def test_a_crashing_model_fails_its_edge_cases_and_the_checklist_goes_on(tiny_int4: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_int4, broken)
    register.register(broken, "tiny-broken")
    (models_root() / "tiny-broken" / "model.onnx").write_bytes(b"not a model")
    results = checklist.run_edge_cases("tiny-broken", None, timeout_s=20, seed=0, startup_s=20)
    assert [r.case for r in results] == [case for case, _ in checklist.EDGE_CASES]
    assert not any(r.passed for r in results) and "process died" in results[0].detail and results[0].value is None
