"""The documentation: a README that fits on a page, reference pages generated from the code, examples that run.

``make test`` also builds the site with ``mkdocs build --strict`` (a broken link or any warning
fails); these tests check what a build cannot: that the generated references follow the code,
that the README stays short and free of measurements and history, and that every shell and
Python example in the README and the tutorial is run here or marked ``<!-- not run: reason -->``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The pages whose every example must run or be marked: the README and the tutorial.
EXAMPLE_PAGES = (README, *sorted((DOCS / "tutorial").glob("*.md")))
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>[^>]*\S[^>]*) -->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"bash": "shell", "sh": "shell", "console": "shell", "python": "python", "py": "python"}


def _docs_reference():
    """``scripts/docs_reference.py`` (the mkdocs hook), loaded as a module."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _docs_reference()


def _examples(page: Path) -> list[tuple[str, str, str | None, int]]:
    """Each fenced block of ``page``: (kind, body, the not-run reason or None, line number)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = NOT_RUN.fullmatch(before.strip())
        kind = RUNNABLE.get(block.group("lang"), "")
        found.append((kind, block.group("body"), mark.group("reason") if mark else None,
                      text.count("\n", 0, block.start()) + 1))
    return found


# --- the README --------------------------------------------------------------------------------------------------


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


# --- the reference pages, generated from the code ----------------------------------------------------------------


