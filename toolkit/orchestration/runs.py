"""A run and its run file: the parameters a notebook works on, and the record kept beside them.

A run is its folder and its parameters, read from the run file ``params.json`` there
(:func:`open_run`; ``slmops lab`` and ``slmops run`` write it). A choice a widget made that
differs from the file (precisions, INT4 recipe, template) is written back to ``params.json``
and ``run.json`` (:func:`record`) before the stage runs, so an interactive run is recorded as
``slmops run`` records one and ``slmops rerun`` repeats it. The stages themselves are
:mod:`slmops.toolkit.orchestration.run_stages`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.domain import provenance, run_params
from slmops.toolkit.domain.run_params import RunParams
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.weights.bundled import model_or_bundled

#: The run file: a run's parameters, every path absolute (the name ``slmops run`` gives it too).
RUN_FILE = "params.json"
#: What the run's provenance is kept in, beside the run file.
RECORD_FILE = "run.json"

_NAMES = frozenset(f.name for f in fields(RunParams))


@dataclass(frozen=True)
class Run:
    """A run: its parameters (``params.run_dir`` is absolute).

    Attributes:
        params: Every parameter, with the run's folder in ``run_dir``.
    """

    params: RunParams

    @property
    def dir(self) -> Path:
        """The run's folder (results, models, rendered notebooks)."""
        return Path(self.params.run_dir)

    @property
    def models(self) -> Path:
        """Where the conversions go (``models/PRECISION``, ``models/convert.json``)."""
        return self.dir / "models"

    @property
    def cache(self) -> str | None:
        """The Foundry Local cache (None: ``$SLMOPS_CACHE_DIR`` or the default)."""
        return self.params.cache_dir or None

    @property
    def interactive(self) -> bool:
        """Whether the notebooks wait for each stage's button (False: straight through)."""
        return self.params.interactive


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def open_run(run_file: str | os.PathLike[str] = RUN_FILE, overrides: Mapping[str, object] | None = None) -> Run:
    """The run a notebook works on: the run file's parameters, with ``overrides`` on top.

    Args:
        run_file: The run's ``params.json`` (``slmops lab`` writes it in the workspace; relative
            paths are read from the current folder, the notebook's). Missing: the defaults.
        overrides: A namespace to take parameters from, e.g. a notebook's ``globals()``:
            values papermill injected there win over the file. Other names are ignored.

    Returns:
        The run, its folder made absolute (empty ``run_dir``: the run file's folder). When that
        folder has no run file yet, one is written (and ``run.json``), so ``slmops report`` and
        ``rerun`` work on an interactive run.

    Raises:
        ParamsError: a parameter of the wrong name, type or range, in the file or the overrides.
        InputError: the run's folder is the toolkit's own notebooks folder (working there would
            write into the checkout or the installed package).

    In IPython, the toolkit's errors are shown in one line from then on (:func:`show_errors_in_one_line`).
    """
    show_errors_in_one_line()
    file = Path(run_file).expanduser().resolve()
    loaded = pipeline.load_params(file) if file.is_file() else {}
    loaded.pop("sweep", None)
    chosen = {**loaded, **{k: v for k, v in (overrides or {}).items() if k in _NAMES}}
    chosen["run_dir"] = str(Path(chosen.get("run_dir") or file.parent).expanduser().resolve())
    folder = Path(chosen["run_dir"])
    shipped = pipeline.notebooks_dir().resolve()
    if _inside(folder, shipped) or _inside(folder, shipped.parent / "toolkit"):
        raise InputError(f"This run would write into {folder}, the toolkit's own notebooks: make a workspace "
                         "with `slmops lab DIR` and open the notebooks there.")
    run = Run(run_params.parse(run_params.with_absolute_paths(chosen), source=str(file)))
    if not (run.dir / RUN_FILE).is_file():
        write_record(run)
    return run


def _one_line(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython's handler for the toolkit's own errors: the message, as the CLI prints it (no traceback).

    IPython ignores what a handler returns when a cell raises, so it shows the line itself (in a
    kernel, as the cell's error output: papermill still sees the cell fail).
    """
    line = [f"{etype.__name__}: {value}"]
    shell._showtraceback(etype, value, line)
    return line


def show_errors_in_one_line() -> None:
    """In IPython, show the toolkit's own errors (:class:`SlmopsError`) in one line, as the CLI does.

    The cell still fails (papermill still records it); only the traceback is left out: the
    message names the problem and the fix. Outside IPython, nothing happens.
    """
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((SlmopsError,), _one_line)


def write_record(run: Run) -> Path:
    """Write the run's ``params.json`` and ``run.json`` (as ``slmops run`` writes them); return the former."""
    run.dir.mkdir(parents=True, exist_ok=True)
    written = artifacts.write_json(run.dir / RUN_FILE, run.params.as_dict())
    provenance.write_run_record(run.dir, provenance.run_record(run.params, model_or_bundled(run.params.model_dir)))
    return written


def record(run: Run, **changes: object) -> Run:
    """The run with ``changes`` (a widget's choices); ``params.json`` and ``run.json`` rewritten when they differ.

    Raises:
        ParamsError: a change of the wrong name, type or range.
    """
    for name, value in changes.items():
        run_params.check_value(name, value, where="the widget's choice: ")
    changed = replace(run.params, **changes)
    if changed == run.params:
        return run
    updated = Run(changed)
    write_record(updated)
    return updated


#: The parameters a widget chooses (and :func:`record` writes back); a later stage reads them from the run file.
CHOSEN = ("model_dir", "precisions", "int4_recipe", "int4_block_size", "template")


def current(run: Run) -> Run:
    """The run with the widgets' latest choices (:data:`CHOSEN`) read back from its run file.

    A notebook keeps the run it opened; a stage started later takes what an earlier button recorded.
    """
    file = run.dir / RUN_FILE
    recorded = artifacts.read_json(file) if file.is_file() else None
    if not isinstance(recorded, dict):
        return run
    chosen = {k: recorded[k] for k in CHOSEN if k in recorded}
    for name, value in chosen.items():
        run_params.check_value(name, value, where=f"{file}: ")
    return Run(replace(run.params, **chosen))


def waits_for_buttons(run_file: str | os.PathLike[str] = RUN_FILE, overrides: Mapping[str, object] | None = None) -> bool:
    """Whether a notebook working beside ``run_file`` waits for its buttons: the file's ``interactive``.

    A value in ``overrides`` (papermill's injected parameters) wins; without a run file (a comparison
    run on two folders by papermill) it is False. Nothing is written: notebook 05 may be run anywhere.
    """
    if overrides is not None and "interactive" in overrides:
        return bool(overrides["interactive"])
    file = Path(run_file).expanduser()
    recorded = artifacts.read_json(file) if file.is_file() else None
    return bool(recorded.get("interactive")) if isinstance(recorded, dict) else False
