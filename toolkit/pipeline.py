"""Run the four notebooks headless with papermill into ``outputs/RUN/``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from toolkit import report, settings
from toolkit.errors import SlmopsError

#: The demo: the whole pipeline on the bundled model.
DEMO_PARAMS: dict = {
    "model_dir": "",
    "name_prefix": "smollm2",
    "precisions": ["fp32", "int8", "int4"],
    "method": "builder",
    "int4_recipe": "builder-default",
    "compare_recipes": True,
    "template": "auto",
    "cases": "",
    "checklist_requests": 200,
    "prompt_lengths": [16, 128],
    "gen_tokens": 32,
    "repeats": 3,
    "warmup": 1,
    "cache_dir": "",
}


def notebooks_dir() -> Path:
    """The folder holding ``01_convert.ipynb`` ... (``$SLMOPS_NOTEBOOKS`` overrides)."""
    env = os.environ.get("SLMOPS_NOTEBOOKS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


def load_params(path: str | os.PathLike[str]) -> dict:
    """Read notebook parameters from a YAML or JSON file.

    Raises:
        SlmopsError: missing file, bad syntax, or unknown parameter names.
    """
    file = Path(path)
    if not file.is_file():
        raise SlmopsError(f"No parameters file at {file}.")
    import yaml

    try:
        params = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SlmopsError(f"{file} is not valid YAML/JSON: {exc}") from exc
    unknown = set(params) - set(DEMO_PARAMS)
    if unknown:
        raise SlmopsError(f"Unknown parameters in {file}: {sorted(unknown)}. Known: {sorted(DEMO_PARAMS)}.")
    return params


def _render_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target = notebook.with_suffix(".html")
    target.write_text(body)
    return target


def run_pipeline(params: dict, out: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Execute the four notebooks with ``params`` into ``out``; render HTML; write ``index.html``.

    A failing notebook is still saved and rendered (with papermill's error banner), the
    index says which one failed, and :class:`SlmopsError` is raised.

    Example:
        >>> run_pipeline(DEMO_PARAMS, "outputs/demo").name
        'index.html'
    """
    import papermill

    settings.apply_offline_env()
    run_dir = Path(out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # Headless: notebooks show chosen values instead of widgets that would not render in HTML.
    merged = {**DEMO_PARAMS, **params, "run_dir": str(run_dir), "interactive": False}
    # Notebooks run with the run folder as their working directory: pin user paths now.
    for key in ("model_dir", "cases", "cache_dir"):
        if merged[key]:
            merged[key] = str(Path(merged[key]).expanduser().resolve())
    (run_dir / "params.json").write_text(json.dumps(merged, indent=2))
    status: dict[str, str] = {}
    failure = None
    for name in report.NOTEBOOKS:
        target = run_dir / f"{name}.ipynb"
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebooks_dir() / f"{name}.ipynb"), str(target), parameters=merged, kernel_name="python3",
                progress_bar=progress, cwd=str(run_dir),
            )
            status[name] = f"ok in {time.perf_counter() - start:.0f} s"
        except Exception as exc:  # papermill saves the failed notebook before raising
            status[name] = f"FAILED: {getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"
            failure = (name, exc)
        if target.is_file():
            _render_html(target)
        if failure:
            break
    index = report.write_index(run_dir, params=merged, status=status)
    if failure:
        raise SlmopsError(f"Notebook {failure[0]} failed: {status[failure[0]]}. See {run_dir / failure[0]}.html")
    return index


def demo(out: str | os.PathLike[str] = "outputs/demo", *, progress: bool = True) -> Path:
    """The whole pipeline on the bundled model (fp32, int8, int4)."""
    return run_pipeline(DEMO_PARAMS, out, progress=progress)
