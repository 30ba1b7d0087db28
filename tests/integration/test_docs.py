"""The documentation's examples run: every unmarked shell and Python block of the README and the tutorial.

The rest of the documentation's checks (what is marked, the generated references) are fast:
``tests/unit/test_docs.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_docs import EXAMPLE_PAGES, README, ROOT, _examples


def _run(kind: str, body: str) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    command = ["bash", "-euo", "pipefail", "-c", body] if kind == "shell" else [sys.executable, "-c", body]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_unmarked_examples_run(page: Path, bundled: Path):
    """Every unmarked shell and Python block runs as written (``bundled``: the bundled model is already unpacked)."""
    ran = 0
    for kind, body, reason, line in _examples(page):
        if not kind or reason is not None:
            continue
        done = _run(kind, body)
        assert done.returncode == 0, f"{page.relative_to(ROOT)}:{line} failed:\n{body}\n{done.stdout}{done.stderr}"
        ran += 1
    if page == README:
        assert ran >= 2
        assert str(bundled) in _run("shell", ".venv/bin/slmops bundled").stdout
