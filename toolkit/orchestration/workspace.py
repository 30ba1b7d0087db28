"""A workspace of one's own for JupyterLab: a run folder with copies of the notebooks and its run file.

``slmops lab DIR`` makes one and starts JupyterLab there. The notebooks read the run file
(``params.json``, every path absolute), so a parameter is changed once, not in five notebooks,
and nothing is written into the checkout or the installed package: the copies, their outputs
and every result stay in ``DIR``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import run_params
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.orchestration.runs import RUN_FILE, Run, write_record

#: The notebooks a workspace holds, in the order they run.
NOTEBOOKS = ("01_convert", "02_register", "03_test", "04_benchmark", "05_compare")


@dataclass(frozen=True)
class Workspace:
    """A workspace made by :func:`create`.

    Attributes:
        folder: The run folder (absolute).
        run_file: Its ``params.json``.
        notebooks: The copied notebooks, in order.
        kept: Notebooks already there and left as they were (a workspace opened again).
    """

    folder: Path
    run_file: Path
    notebooks: tuple[Path, ...]
    kept: tuple[Path, ...] = ()


def create(folder: str | os.PathLike[str], params: dict | None = None) -> Workspace:
    """Make (or reopen) the workspace ``folder``: the notebooks copied in, the run file written.

    A notebook already in the folder is kept (it may hold the user's work), and so is a run
    file already there unless ``params`` change it.

    Args:
        folder: The run folder (created).
        params: Parameters on top of the run file's, or of the defaults for a new workspace.

    Raises:
        ParamsError: a parameter of the wrong name, type or range (before anything is written).
        InputError: ``folder`` is a file, or inside the toolkit's own notebooks; a model, adapter or
            cases path that does not exist.
    """
    target = Path(folder).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} is a file; give `slmops lab` a folder (new or one it made before).")
    shipped = pipeline.notebooks_dir().resolve()
    if target == shipped or shipped in target.parents:
        raise InputError(f"{target} is the toolkit's own notebooks folder; give `slmops lab` another folder, "
                         "e.g. outputs/lab.")
    existing = pipeline.load_params(target / RUN_FILE) if (target / RUN_FILE).is_file() else {}
    existing.pop("sweep", None)
    merged = {**existing, **(params or {}), "run_dir": str(target)}
    merged.setdefault("interactive", True)
    run = Run(run_params.parse(run_params.with_absolute_paths(merged), source="slmops lab"))
    for name in ("model_dir", "adapter", "cases"):  # the inputs the run record fingerprints must be there
        value = getattr(run.params, name)
        if value and not Path(value).exists():
            raise InputError(f"{name}: nothing at {value}; give an existing path (e.g. --set {name}=PATH) or "
                             "leave it empty.")
    target.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for name in NOTEBOOKS:
        notebook = target / f"{name}.ipynb"
        if notebook.exists():
            kept.append(notebook)
        else:
            shutil.copyfile(shipped / f"{name}.ipynb", notebook)
        copied.append(notebook)
    if not existing or params:  # a reopened workspace keeps its record unless parameters were given
        write_record(run)
    return Workspace(target, target / RUN_FILE, tuple(copied), tuple(kept))


def lab_command(workspace: Workspace, *, browser: bool = True) -> list[str]:
    """The command that starts JupyterLab in ``workspace`` (this Python's, so the toolkit's kernel is at hand).

    As root (a container's usual user) it adds ``--allow-root``, without which JupyterLab refuses to start;
    it still listens on localhost only, behind its token. Offline, its server neither checks for updates nor
    fetches Jupyter's news (the installed settings defaults stop the page asking for them).
    """
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workspace.folder}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"]
    return command + ([] if browser else ["--no-browser"]) + (["--allow-root"] if os.geteuid() == 0 else [])


def jupyterlab_missing() -> str | None:
    """Why JupyterLab cannot start (one line naming the fix), or None when it is installed."""
    if importlib.util.find_spec("jupyterlab") is None:  # the optional [lab] extra
        return "JupyterLab is not installed: pip install 'slmops-toolkit[lab]' (or pip install jupyterlab)."
    return None
