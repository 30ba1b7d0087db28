"""Shareable reports: tables for notebooks, and the run's ``index.html`` and a sweep's comparison page.

Pages come from the Jinja2 templates in ``pages/`` (autoescaped, one stylesheet); every link
is relative, so a run folder (or its archive) can be sent as it is.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.core.artifacts import read_json
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.core.measure import versions
from slmops.toolkit.domain import deployment_choice, recipe_choice
from slmops.toolkit.domain.provenance import read_run_record
from slmops.toolkit.domain.results.bench import BenchFile, TtftLine
from slmops.toolkit.domain.results.checklist import ChecklistReport, ControlResult
from slmops.toolkit.domain.results.conversion import read_conversions
from slmops.toolkit.domain.results.deployment import NOT_MEASURED, Outcome, PrecisionFigures, PrecisionOutcome
from slmops.toolkit.domain.results.recipes import read_recipes
from slmops.toolkit.domain.results.registration import RegisteredModel, read_registered
from slmops.toolkit.domain.results.sweep import Placement
from slmops.toolkit.presentation import bench_text, checklist_tables, compare
from slmops.toolkit.presentation.render import render_page
from slmops.toolkit.presentation.tables import Html, html_table
from slmops.toolkit.stages import bench, checklist
from slmops.toolkit.stages.convert_record import conversion_rows

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_convert", "02_register", "03_test", "04_benchmark")
#: The result file each notebook's stage writes: a notebook run in JupyterLab (no rendered HTML) ran when it is there.
STAGE_RESULTS = dict(zip(NOTEBOOKS, ("models/convert.json", "registered.json", "test.json", "bench.json"), strict=True))


def table(rows: list, columns: list[str] | None = None) -> Html:
    """``rows`` (dicts or dataclasses; optionally only ``columns``) as the table the report shows, for a notebook.

    The one renderer of the report's pages (:func:`~slmops.toolkit.presentation.tables.html_table`):
    headings in words with units, no index column, every cell whole, no ``NaN``.
    """
    return html_table(rows, columns)


def save_figure(ax, path: str | os.PathLike[str]) -> Path:
    """Save the figure of ``ax`` as PNG and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=110)
    return path


def figure(ax, path: str | os.PathLike[str]):
    """Save the figure of ``ax`` as PNG and return it as an image the notebook (and its HTML) shows.

    The toolkit's figures are built without pyplot, so Jupyter has no display hook for them.
    """
    from IPython.display import Image

    return Image(filename=str(save_figure(ax, path)))


def _bench_report(run: Path) -> BenchFile | None:
    """The run's ``bench.json``, or None when it is missing or not the shape the benchmark writes."""
    return bench.read_results(run / "bench.json")


def measured_figures(run_dir: str | os.PathLike[str]) -> dict[str, PrecisionFigures]:
    """:func:`run_summary` by precision: what a run has measured so far (a precision appears once converted).

    Example:
        >>> measured_figures("outputs/demo")["int4"].size_mb
        203.283
    """
    return {row.precision: row for row in run_summary(run_dir)}


#: Which section of the index each plot stands beside (by file stem); any other plot goes last.
PLOT_SECTIONS = {
    "conversion": ("finetune_loss", "sizes"),
    "recipes": ("recipes",),
    "checklist": ("rss_over_requests", "ms_per_token"),
    "bench": ("decode_tps", "ttft_ms", "latency_vs_prompt", "latency_vs_generation", "peak_rss_mib", "tradeoff",
              "decode_vs_threads"),
}


def _span(values: list[float], unit: str = "", digits: int = 2) -> str:
    """``"a-b unit"`` for a range, ``"a unit"`` for one value."""
    low, high = min(values), max(values)
    text = f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}-{high:.{digits}f}"
    return text + unit


def _checks_sentence(kept: list[PrecisionOutcome]) -> str:
    """Which precisions lose no check to another: "pass every checklist item" only when they miss none at all."""
    if not kept:
        return "No precision passes every checklist item"
    names = " and ".join(r.precision for r in kept)
    counts = [r.figures.checks_passed.partition(" ")[0].split("/") for r in kept]
    if all(len(c) == 2 and c[0] == c[1] for c in counts):
        return f"{names} pass every checklist item"
    shown = ", ".join(f"{r.precision} {r.figures.checks_passed}" for r in kept)
    return (f"{names} lose no check to another precision that the paired tests tell from chance ({shown} passed); "
            "what every build misses is the model's own (the recommendation lists it)")


def _number(value: float | str) -> float | None:
    """``value`` when it is a non-zero number (not ``–``), else None."""
    return value if isinstance(value, int | float) and value else None


def _size_speed_sentence(rows: list[PrecisionOutcome]) -> list[str]:
    """Each precision's size and decode speed against FP32's, when FP32 has both."""
    figures = [r.figures for r in rows]
    base = next((r for r in figures if r.precision == "fp32"), None)
    if not (base and _number(base.decode_tps) and _number(base.size_mb)):
        return []
    parts = [f"{r.precision} is {r.size_mb / base.size_mb:.2f}x the size and decodes "
             f"{r.decode_tps / base.decode_tps:.2f}x as fast" for r in figures
             if r is not base and _number(r.size_mb) and _number(r.decode_tps)]
    return ["Against FP32: " + "; ".join(parts) + "."] if parts else []


def _control_sentence(control: ControlResult) -> str:
    """What the base model, not fine-tuned, answers of the domain cases."""
    row = checklist_tables.control_row(control)
    heldout = f" and {row['heldout']} of their held-out paraphrases" if control.heldout_total else ""
    return (f"The base model, not fine-tuned, answers {row['trained']} of the trained questions{heldout}: "
            f"{row['verdict']}.")


def _threads_sentence(registered: list[RegisteredModel] | None) -> list[str]:
    """The thread counts chosen by probe and their speedup over the runtime's default."""
    chosen = [r for r in registered or [] if r.threads_speedup is not None]
    if not chosen:
        return []
    return [(f"Threads chosen by probe (--threads auto): {', '.join(str(r.threads) for r in chosen)}, "
             f"decoding {_span([r.threads_speedup for r in chosen], 'x')} the runtime's default.")]


def _ttft_sentence(ttft: list[TtftLine]) -> str:
    """Foundry Local's first token against the direct engine's, split into its parts."""
    other = [r.runtime_other_ms for r in ttft if r.runtime_other_ms is not None]
    together = [r for r in ttft if r.runtime_other_ms is None]
    return (f"Foundry Local's first token takes {_span([r.ratio for r in ttft], 'x')} the direct "
            f"engine's on the same prompt tokens: session {_span([r.setup_ms for r in ttft], ' ms')}, "
            f"template and tokenizer {_span([r.template_ms for r in ttft], ' ms')}, the prompt pass "
            "itself (the direct engine's)"
            + (f", and {_span(other, ' ms', 1)} of the runtime's own request handling" if other else "")
            + (f"; in {len(together)} of {len(ttft)} rows Foundry Local's own build prefills faster than "
               "the direct engine, so its prefill and request handling are given together (not "
               "measurable apart)" if together else "") + ".")


def _bench_sentences(bench_report: BenchFile) -> list[str]:
    """What ``bench.json``'s analysis sections show: ceiling, engine ratios, first token, endpoint, noise."""
    story = []
    ceiling = [r for r in bench_report.decode_ceiling if r.engine == "foundry-local"]
    if ceiling:
        gbs = bench_report.metadata.memory_bandwidth_gbs
        story.append(f"Decode reaches {_span([r.percent_of_ceiling for r in ceiling], '%', 0)} of the "
                     f"memory-bandwidth bound ({gbs:.1f} GB/s, measured as decode reads); the rest is compute, "
                     "the KV cache and the runtime's own work.")
    ratios = bench_report.engine_ratios
    if ratios:
        story.append(f"Foundry Local decodes at {_span([r.ratio for r in ratios], 'x')} ONNX Runtime GenAI "
                     "directly on the same prompt tokens.")
    ttft = bench_report.ttft_breakdown
    if ttft:
        story.append(_ttft_sentence(ttft))
    endpoint = bench_report.endpoint_ratios
    if endpoint:
        story.append(f"Through the OpenAI-compatible endpoint: {_span([r.decode_ratio for r in endpoint], 'x')}"
                     f" in-process decode, first token {_span([r.ttft_overhead_ms for r in endpoint], ' ms', 1)}"
                     " later.")
    noisy = bench_report.noisy
    if noisy:
        story.append(f"{len(noisy)} benchmark figures varied over 10% between runs: rerun with more repeats on a "
                     "quieter machine before trusting small differences.")
    return story


def run_story(recommendation: deployment_choice.Recommendation | None, bench_report: BenchFile | None,
              registered: list[RegisteredModel] | None, control: ControlResult | None = None,
              tests: ChecklistReport | None = None) -> list[str]:
    """"What this run shows": a few sentences generated from the run's own figures.

    Args:
        recommendation: :func:`slmops.toolkit.domain.deployment_choice.recommend` of the run.
        bench_report: Its ``bench.json``.
        registered: Its ``registered.json`` (thread choices).
        control: ``test.json``'s negative control (the base model on the same domain cases), if any.
        tests: ``test.json``, for what the fine-tune forgot (its ``retention`` records), if any.

    Example:
        >>> run_story(recommend(load_run(run)), bench_json, registered)[0]
        'Against FP32: int8 is 0.29x the size and decodes 2.20x as fast; int4 is 0.37x the size and ...'
    """
    rows = recommendation.rows if recommendation else []
    story = _size_speed_sentence(rows)
    failed = [f"{p} {why}" for p, why in recommendation.failed.items()] if recommendation else []
    kept = [r for r in rows if r.outcome not in (Outcome.FAILED, Outcome.NOT_CHECKED)]
    if rows:
        story.append(_checks_sentence(kept) + (f"; {'; '.join(failed)}." if failed else "."))
    if control:
        story.append(_control_sentence(control))
    if tests is not None:
        story += checklist_tables.retention_sentences(tests)
    story += _threads_sentence(registered)
    if bench_report:
        story += _bench_sentences(bench_report)
    return story


#: Result files of a run, linked from the index and kept in its archive.
RESULT_FILES = ("params.json", "versions.json", "models/convert.json", "models/recipes/recipes.json",
                "registered.json", "test.json", "bench.json", "bench.csv")


def run_summary(run_dir: str | os.PathLike[str]) -> list[PrecisionFigures]:
    """One row per precision of a run: size, checks passed, top-1 agreement, decode speed, latency, memory."""
    rows = deployment_choice.side_by_side([("", compare.load_run(run_dir))])
    return [row for row in rows if row.precision != NOT_MEASURED]


def run_versions(run_dir: str | os.PathLike[str]) -> dict[str, str]:
    """The package versions a run ran with: its ``run.json``'s, else its ``versions.json``, else this environment's.

    Example:
        >>> run_versions("outputs/demo")["onnxruntime-genai"]
        '0.14.1'
    """
    run = Path(run_dir)
    record = read_run_record(run)
    if record is not None and record.versions:
        return dict(record.versions)
    written = read_json(run / "versions.json")
    return written if isinstance(written, dict) and written else versions()


def write_index(run_dir: str | os.PathLike[str], *, params: dict | None = None,
                status: dict[str, str] | None = None) -> Path:
    """Write ``run_dir/index.html``: summary, links to the rendered notebooks and result files, tables,
    plots, the exact parameters and the package versions the run ran with (``versions.json``).

    The versions are the run's own: its ``run.json`` record, else an existing ``versions.json``;
    only a run with neither gets this environment's (and ``versions.json`` is then written). A
    report rewritten after an upgrade never replaces them with the upgraded packages.

    ``params`` defaults to the run's ``params.json``. Every link is relative, so the folder
    (or its archive, see :func:`archive`) can be sent as it is.

    Example:
        >>> write_index("outputs/demo").name
        'index.html'
    """
    run = Path(run_dir)
    status = status or {}
    params = params if params is not None else read_json(run / "params.json")
    found = run_versions(run)
    if not (run / "versions.json").is_file():
        artifacts.write_json(run / "versions.json", found)
    tests = checklist.read_report(run / "test.json")
    bench_report = _bench_report(run)
    converted = read_conversions(run / "models" / "convert.json")
    registered = read_registered(run / "registered.json") if (run / "registered.json").is_file() else []
    recommendation = deployment_choice.recommend(compare.load_run(run)) if tests else None
    recipes = read_recipes(run / "models" / "recipes" / "recipes.json")
    plots = [png.stem for png in sorted(run.glob("*.png"))]
    placed = {stem for stems in PLOT_SECTIONS.values() for stem in stems}
    page = render_page(
        "index.html.j2", run_name=run.name, written=time.strftime("%Y-%m-%d %H:%M"), summary=run_summary(run),
        recommendation=recommendation,
        story=run_story(recommendation, bench_report, registered, tests.control if tests else None, tests),
        registered=[{**codec.dump(model), "threads_probe": ", ".join(
            f"{p.threads or 'default'}: {p.decode_tps:.0f} tok/s, {p.ttft_ms:.0f} ms" for p in model.threads_probe)}
            for model in registered],
        section_plots={section: [stem for stem in stems if stem in plots] for section, stems in PLOT_SECTIONS.items()},
        other_plots=[stem for stem in plots if stem not in placed],
        notebooks=[{"name": name, "html": (run / f"{name}.html").is_file(), "ipynb": (run / f"{name}.ipynb").is_file(),
                    "status": status.get(name, "ran" if (run / f"{name}.html").is_file()
                                        or (run / STAGE_RESULTS[name]).is_file() else "not run")}
                   for name in NOTEBOOKS],
        result_files=[f for f in RESULT_FILES if (run / f).is_file()],
        conversion=conversion_rows(converted) if converted else [],
        recipes=[{**codec.dump(r), "recipe": f"{r.recipe} ({recipe_choice.IN_GRAPH_LABEL})" if r.lora_in_graph else r.recipe}
                 for r in recipes],
        recipes_in_graph=recipe_choice.in_graph_words(recipes),
        checklist=checklist_tables.summary_rows(tests) if tests else [],
        checklist_details=checklist_tables.checklist_details(tests.models, style=False) if tests else "",
        quality=checklist_tables.quality_rows(tests.models) if tests else [],
        control=checklist_tables.control_row(tests.control) if tests and tests.control else None, bench=bench_report,
        bench_summary=bench_text.summary_lines(bench_report, tests) if bench_report else [],
        bench_warnings=bench_text.warnings(bench_report.rows) if bench_report else [],
        params=params,
        versions=[{"package": k, "version": v} for k, v in found.items()],
    )
    return artifacts.write_text(run / "index.html", page)


def write_sweep_index(out_dir: str | os.PathLike[str], runs: list[tuple[str, dict, str]], *,
                      swept: list[str], placements: list[Placement] | None = None) -> Path:
    """Write ``out_dir/index.html`` comparing the runs of a sweep, one row per run and precision.

    The table is :func:`slmops.toolkit.domain.deployment_choice.side_by_side`, the one a comparison of two runs shows.

    Args:
        runs: ``(label, params, status)`` per run; each run's folder is ``out_dir/label``.
        swept: The parameter names the sweep varied (shown as columns).
        placements: Where a distributed sweep ran each run: shown as columns, with a warning when the
            runs' timings come from different kinds of node.
    """
    out = Path(out_dir)
    placements_by_label = {p.label: p for p in placements or []}
    rows = []
    for label, params, state in runs:
        varied = {name: json.dumps(params.get(name)) for name in swept}
        where = placements_by_label.get(label)
        ran = ({"node": f"{where.host} ({where.node})", "node_type": where.node_type, "attempts": where.attempts}
               if where else {})
        for row in deployment_choice.side_by_side([(label, compare.load_run(out / label))]):
            rows.append({"label": label, **varied, "status": state, **ran, **asdict(row)})
    columns = [*swept, "status", *(["node", "node_type", "attempts"] if placements else []), "precision", "size_mb",
               "x_fp32", "checks_passed", "top1_agreement", "decode_tps", "ttft_ms", "peak_rss_mib"]
    node_types = sorted({where.node_type for where in placements_by_label.values() if where.status == "ok"})
    retried = [(label, where.lost) for label, where in placements_by_label.items() if where.lost]
    page = render_page("sweep.html.j2", sweep_name=out.name, run_count=len(runs), swept=swept, columns=columns,
                       rows=rows, node_types=node_types, retried=retried, distributed=bool(placements))
    return artifacts.write_text(out / "index.html", page)


#: Files of a converted model that an archive leaves out unless asked (the weights).
_WEIGHTS = (".onnx", ".data", ".onnx_data", ".bin", ".safetensors")


def archive(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
            with_models: bool = False) -> Path:
    """Zip a run folder to send: the index, rendered notebooks, plots and result files.

    Model weights are left out unless ``with_models`` (they are hundreds of MB and the
    receiver can rebuild them from ``params.json``); each model's ``manifest.json`` stays.

    Returns:
        The archive, ``RUN.zip`` beside the run folder unless ``out`` says otherwise.

    Raises:
        InputError: the folder is not a run (no ``index.html``).
    """
    run = Path(run_dir).resolve()
    if not (run / "index.html").is_file():
        raise InputError(f"{run} is not a run folder (no index.html); run `slmops demo` or `slmops run` first.")
    target = Path(out) if out else run.with_suffix(".zip")
    artifacts.remove_stale(target.parent)  # the partial archive of a zip that was killed
    links, weights = [], []
    with artifacts.atomic_path(target) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(run.rglob("*")):
            # A link could point anywhere (say /etc/shadow): never follow one into the archive.
            if file.is_symlink():
                links.append(file.relative_to(run))
            elif file.is_file() and not with_models and file.suffix in _WEIGHTS:
                weights.append(file.stat().st_size)
            elif file.is_file():
                zf.write(file, Path(run.name) / file.relative_to(run))
    if weights:
        log.info("Left out %d model weight files (%.0f MB): --with-models adds them.", len(weights), sum(weights) / 1e6)
    if links:
        log.warning("Left out %d links (never followed into an archive): %s%s", len(links),
                    ", ".join(map(str, links[:3])), " ..." if len(links) > 3 else "")
    return target
