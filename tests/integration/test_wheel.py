"""The wheel is the product: built, installed in a fresh venv outside the checkout, and run from another folder.

The fresh venv gets the already-installed dependencies through a ``.pth`` line naming this
venv's site-packages (a path line: the ``.pth`` files in that folder, among them the
project's own editable finder, are not processed), and the wheel with ``pip install
--no-deps``: fast, offline, and nothing of the checkout on its path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from slmops.toolkit.domain import packaged, sources
from tests.unit.test_wheel import ROOT

NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout without its build outputs: setuptools never empties an old
    ``build/`` folder, whose modules deleted since would ship in the wheel."""
    source = tmp_path_factory.mktemp("source") / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                                "outputs", "__pycache__", ".*_cache"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("slmops_toolkit-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel installed (and this venv's dependencies visible)."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    # The wheel first, while the fresh venv sees nothing else (pip must find nothing to replace).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies-from-the-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Their data files too (nbconvert's templates and Jupyter's kernelspecs live in <prefix>/share/jupyter), beside
    # the wheel's own (JupyterLab's settings defaults in share/jupyter/lab/settings).
    _link_missing(Path(sys.prefix) / "share" / "jupyter", env_dir / "share" / "jupyter")
    # The bundled model's package as a first use would have fetched it (this venv's copy; fetching is tested below).
    shared = packaged.install_dir(sources.BUNDLED_KEY)
    if shared.is_dir():
        target = env_dir / "share" / "slmops" / sources.BUNDLED_KEY
        target.parent.mkdir()
        target.symlink_to(shared)
    return env_dir


def _link_missing(source: Path, target: Path) -> None:
    """Link each entry of ``source`` into ``target`` that ``target`` lacks, going into folders both have."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if (target / entry.name).is_dir() and entry.is_dir():
            _link_missing(entry, target / entry.name)
        elif not (target / entry.name).exists():
            (target / entry.name).symlink_to(entry)


def run_in(venv: Path, cwd: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SLMOPS_NOTEBOOKS")}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_carries_the_notebooks_and_templates(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert NOTEBOOKS and all(f"slmops/toolkit/notebooks/{name}" in names for name in NOTEBOOKS)
    assert "slmops/toolkit/presentation/pages/index.html.j2" in names and "slmops/toolkit/domain/data/veloria.jsonl" in names
    assert all(name.startswith(("slmops/", "slmops_toolkit-")) for name in names)  # one namespace, nothing else
    # JupyterLab's settings defaults for the environment: offline, no news and no update checks
    assert any(name.endswith(".data/data/share/jupyter/lab/settings/overrides.d/slmops-toolkit.json") for name in names)
    assert not any(name.startswith(("tests/", "notebooks/", "outputs/")) for name in names)
    # Every package folder (setup.py discovers them), with each of its modules.
    modules = {"slmops/" + path.relative_to(ROOT).as_posix() for package in ("toolkit", "widgets")
               for path in (ROOT / package).rglob("*.py")}
    # The notebooks' readable sources (notebooks/*.py, jupytext percent format) travel beside them.
    modules |= {f"slmops/toolkit/notebooks/{path.name}" for path in (ROOT / "notebooks").glob("*.py")}
    shipped = {name for name in names if name.endswith(".py")}
    assert modules - shipped == set() and shipped - modules == set()  # nothing missing, nothing stale
    folders = {str(Path(name).parent) for name in names}
    assert {f"slmops/{folder.relative_to(ROOT).as_posix()}" for package in ("toolkit", "widgets")
            for folder in (ROOT / package).rglob("*") if folder.is_dir() and folder.name != "__pycache__"} <= folders


def test_the_installed_wheel_runs_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    where = run_in(venv, tmp_path, "python", "-c", "import json, slmops.toolkit; from slmops.toolkit.orchestration import pipeline; "
                   "print(json.dumps([slmops.toolkit.__file__, str(pipeline.notebooks_dir())]))")
    assert where.returncode == 0, where.stderr
    module, notebooks = map(Path, json.loads(where.stdout))
    assert venv in module.parents and ROOT not in module.parents  # the wheel's code, not the checkout's
    assert venv in notebooks.parents and sorted(p.name for p in notebooks.glob("*.ipynb")) == NOTEBOOKS

    version = run_in(venv, tmp_path, "slmops", "--version")
    assert version.returncode == 0 and version.stdout.startswith("slmops "), version.stderr
    demo = run_in(venv, tmp_path, "slmops", "demo", "--help")
    assert demo.returncode == 0 and "usage: slmops demo" in demo.stdout
    bundled = run_in(venv, tmp_path, "slmops", "bundled")
    assert bundled.returncode == 0, bundled.stderr
    assert (Path(bundled.stdout.strip()) / "config.json").is_file()
    assert not list(tmp_path.iterdir())  # nothing written into the current folder


@pytest.mark.slow
def test_the_tiny_pipeline_runs_from_the_installed_wheel(venv: Path, tiny_model: Path, tmp_path: Path) -> None:
    settings = ["name_prefix=wheeltiny", "precisions=[int4]", "compare_recipes=false", "finetune=false",
                "checklist_requests=0", "prompt_lengths=[16]", "gen_lengths=[4]", "repeats=1", "warmup=0",
                f"model_dir={tiny_model}"]
    done = run_in(venv, tmp_path, "slmops", "run", *(f"--set={s}" for s in settings), "-o", "run", timeout=900)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: the random model fails its checklist
    assert (tmp_path / "run" / "index.html").is_file(), done.stdout + done.stderr
    assert "[4/4] benchmark: " in done.stdout
