"""Sweeps on Ray, before any cluster starts: a run needs a sweep, and a missing ``ray`` says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.orchestration import cluster


def test_ray_needs_a_sweep_and_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    single = tmp_path / "one.yaml"
    single.write_text("precisions: [int4]\n")
    assert cli.main(["run", "--params", str(single), "--out", str(tmp_path / "r"), "--ray"]) == 2
    assert "has no sweep: section" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the [cluster] extra were not installed
    with pytest.raises(InputError, match=r"slmops-toolkit\[cluster\]"):
        cluster.connect(None)
    assert not (tmp_path / "r").exists()
