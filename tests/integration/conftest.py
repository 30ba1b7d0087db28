"""The fixtures that build a model: visible to the slow tiers only (``tests/unit/`` cannot ask for them)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_int4(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    out = tmp_path_factory.mktemp("converted") / "int4"
    return convert(ConvertSpec(tiny_model, out, Precision.INT4), progress=False).output_dir


@pytest.fixture(scope="session")
def tiny_fp32(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's FP32 build, made once per test process for the files that only read it."""
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    out = tmp_path_factory.mktemp("fp32") / "fp32"
    return convert(ConvertSpec(tiny_model, out, Precision.FP32), progress=False).output_dir


@pytest.fixture(scope="session")
def bundled() -> Path:
    from slmops.toolkit.weights.bundled import bundled_model

    return bundled_model()


#: A two-point sweep on the tiny model, as small as a whole pipeline run gets.
TINY_SWEEP = ("name_prefix: tinysweep\nprecisions: [int4]\ncompare_recipes: false\n"
              "checklist_requests: 0\nprompt_lengths: [16]\ngen_lengths: [4]\nrepeats: 1\nwarmup: 0\n"
              "sweep:\n  int4_block_size: [32, 64]\n")


@pytest.fixture(scope="session")
def tiny_sweep(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """``slmops run --params sweep.yaml --out DIR`` run serially: ``(params file, DIR, stdout, stderr)``."""
    from slmops.toolkit import cli

    work = tmp_path_factory.mktemp("sweep")
    params = work / "sweep.yaml"
    params.write_text(f"model_dir: {tiny_model}\n{TINY_SWEEP}")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", "--params", str(params), "--out", str(work / "sweep")])
    assert code == 0, out.getvalue() + err.getvalue()
    return params, work / "sweep", out.getvalue(), err.getvalue()
