"""Shareable reports: tables for notebooks and the run's ``index.html``."""

from __future__ import annotations

import html
import json
import os
import time
import zipfile
from pathlib import Path

NOTEBOOKS = ("01_convert", "02_register", "03_test", "04_benchmark")


def table(rows: list[dict], columns: list[str] | None = None):
    """A pandas DataFrame of ``rows`` (optionally only ``columns``), for display."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    return frame[[c for c in columns if c in frame.columns]] if columns is not None and len(frame) else frame


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


def read_json(path: str | os.PathLike[str]):
    """A JSON file's content, or None when it does not exist (e.g. a stage that did not run)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def measured_figures(run_dir: str | os.PathLike[str]) -> dict[str, dict]:
    """What a run has measured so far, per precision: size, top-1 agreement with FP32, and the
    benchmark's headline decode tokens/s, time to first token and peak RSS.

    Reads ``models/convert.json``, ``test.json`` and ``bench.json`` where they exist; a
    precision appears once it has been converted.

    Example:
        >>> measured_figures("outputs/demo")["int4"]
        {'size_mb': 203.3, 'x_fp32': 0.374, 'top1': 0.666, 'decode_tps': 93.8, 'ttft_ms': 265.2, 'peak_rss_mb': 814.2}
    """
    run = Path(run_dir)
    figures: dict[str, dict] = {}
    for manifest in read_json(run / "models" / "convert.json") or []:
        figures[manifest["precision"]] = {"size_mb": manifest["size_mb"], "x_fp32": manifest.get("size_ratio_vs_fp32")}
    for check in (read_json(run / "test.json") or {}).get("checks", []):
        precision = check["model"].rsplit("-", 1)[-1]
        if check["check"] == "quality" and check["case"] == "top1-agreement" and precision in figures:
            figures[precision]["top1"] = float(check["value"])
    bench = read_json(run / "bench.json")
    if bench:
        from toolkit.bench import headline_rows

        for row in headline_rows(bench["rows"]):
            if row["precision"] in figures:
                figures[row["precision"]].update({key: row[key] for key in ("decode_tps", "ttft_ms", "peak_rss_mb")})
    return figures


def _html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


#: Packages whose versions a report records.
VERSIONED = ("slmops-toolkit", "foundry-local-sdk", "onnxruntime", "onnxruntime-genai", "onnxruntime-genai-core",
             "olive-ai", "onnx", "transformers", "torch", "papermill", "ipywidgets")

#: Result files of a run, linked from the index and kept in its archive.
RESULT_FILES = ("params.json", "versions.json", "models/convert.json", "models/recipes/recipes.json", "test.json",
                "bench.json", "bench.csv")


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages that shape a run's figures."""
    import platform

    from toolkit.tools import package_versions

    return {"python": platform.python_version(), "platform": platform.platform(), **package_versions(VERSIONED)}


def run_summary(run_dir: str | os.PathLike[str]) -> list[dict]:
    """One row per precision of a run: size, checks passed, top-1 agreement, decode speed, latency, memory."""
    run = Path(run_dir)
    figures = measured_figures(run)
    tests = read_json(run / "test.json") or {}
    passed = {r["model"].rsplit("-", 1)[-1]: f"{r['passed']}/{r['total']}" for r in _checklist_rows(tests)}
    return [{"precision": precision, "size_mb": got.get("size_mb"), "x_fp32": got.get("x_fp32"),
             "checks_passed": passed.get(precision, "–"), "top1_vs_fp32": got.get("top1", "–"),
             "decode_tps": got.get("decode_tps", "–"), "ttft_ms": got.get("ttft_ms", "–"),
             "peak_rss_mb": got.get("peak_rss_mb", "–")} for precision, got in figures.items()]


def _checklist_rows(tests: dict) -> list[dict]:
    if not tests:
        return []
    from toolkit.evaluate import summary_rows

    return summary_rows(tests)


def write_index(run_dir: str | os.PathLike[str], *, params: dict | None = None,
                status: dict[str, str] | None = None) -> Path:
    """Write ``run_dir/index.html``: summary, links to the rendered notebooks and result files, tables,
    plots, the exact parameters and the package versions (also written to ``versions.json``).

    ``params`` defaults to the run's ``params.json``. Every link is relative, so the folder
    (or its archive, see :func:`archive`) can be sent as it is.

    Example:
        >>> write_index("outputs/demo").name
        'index.html'
    """
    run = Path(run_dir)
    status = status or {}
    params = params if params is not None else read_json(run / "params.json")
    found = versions()
    (run / "versions.json").write_text(json.dumps(found, indent=2))
    summary_rows = run_summary(run)
    parts = ["<h1>slmops run: " + html.escape(run.name) + "</h1>",
             f"<p>Written {html.escape(time.strftime('%Y-%m-%d %H:%M'))}.</p>"]
    if summary_rows:
        parts += ["<h2>Summary</h2>", _html_table(summary_rows, list(summary_rows[0]))]
    parts.append("<h2>Notebooks</h2><ul>")
    for name in NOTEBOOKS:
        state = status.get(name, "ok" if (run / f"{name}.html").is_file() else "not run")
        links = [f'<a href="{name}.html">{name}</a>'] if (run / f"{name}.html").is_file() else [name]
        if (run / f"{name}.ipynb").is_file():
            links.append(f'(<a href="{name}.ipynb">ipynb</a>)')
        parts.append(f"<li>{' '.join(links)}: {html.escape(state)}</li>")
    parts.append("</ul><h2>Result files</h2><ul>")
    parts += [f'<li><a href="{f}">{f}</a></li>' for f in RESULT_FILES if (run / f).is_file()]
    parts.append("</ul>")
    converted = read_json(run / "models" / "convert.json")
    if converted:
        from toolkit.convert import summary

        rows = summary(converted)
        parts += ["<h2>Conversion</h2>", _html_table(rows, list(rows[0]))]
    recipes = read_json(run / "models" / "recipes" / "recipes.json")
    if recipes:
        parts += ["<h2>INT4 recipes against FP32</h2>", _html_table(recipes, [
            "recipe", "size_mb", "size_ratio_vs_fp32", "top1", "kl", "perplexity", "decode_tps", "note"])]
    tests = read_json(run / "test.json")
    if tests:
        parts += ["<h2>Quality checklist</h2>",
                  _html_table(_checklist_rows(tests), ["model", "passed", "total", "failed"])]
    bench = read_json(run / "bench.json")
    if bench:
        from toolkit.bench import summary

        parts += ["<h2>Benchmark</h2>", "<ul>" + "".join(f"<li>{html.escape(line)}</li>"
                                                            for line in summary(bench, tests)) + "</ul>",
                  _html_table(bench["rows"], [
                      "model", "engine", "prompt_tokens", "gen_tokens", "threads", "ttft_ms", "decode_tps",
                      "decode_tps_sd", "decode_cv", "noisy", "e2e_ms", "peak_rss_mb", "cpu_percent", "size_mb"]),
                  "<h3>Foundry Local against ONNX Runtime GenAI directly</h3>",
                  _html_table(bench.get("engine_ratios", []), ["model", "target_prompt_tokens", "target_gen_tokens",
                                                               "threads", "foundry_decode_tps", "direct_decode_tps",
                                                               "ratio"])]
        if bench.get("warnings"):
            parts.append("<ul>" + "".join(f"<li>warning: {html.escape(w)}</li>" for w in bench["warnings"]) + "</ul>")
        meta = bench["metadata"]
        parts.append(f"<p>Machine: {html.escape(str(meta['cpu']))}, {meta.get('physical_cores', '?')} cores, "
                     f"memory read bandwidth {meta.get('memory_bandwidth_gbs', '?')} GB/s; measured "
                     f"{html.escape(meta['timestamp'])}.</p>")
    pngs = sorted(run.glob("*.png"))
    if pngs:
        parts.append("<h2>Plots</h2>")
    for png in pngs:
        parts.append(f'<figure><img src="{png.name}" alt="{png.stem}"><figcaption>{png.stem}</figcaption></figure>')
    if params:
        parts += ["<h2>Parameters</h2>", f"<pre>{html.escape(json.dumps(params, indent=2))}</pre>"]
    parts += ["<h2>Versions</h2>", _html_table([{"package": k, "version": v} for k, v in found.items()],
                                                ["package", "version"])]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>slmops {html.escape(run.name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    index = run / "index.html"
    index.write_text(page)
    return index


def write_sweep_index(out_dir: str | os.PathLike[str], runs: list[tuple[str, dict, str]], *,
                      swept: list[str]) -> Path:
    """Write ``out_dir/index.html`` comparing the runs of a sweep, one row per run and precision.

    Args:
        runs: ``(label, params, status)`` per run; each run's folder is ``out_dir/label``.
        swept: The parameter names the sweep varied (shown as columns).
    """
    out = Path(out_dir)
    rows = []
    for label, params, state in runs:
        link = f'<a href="{html.escape(label)}/index.html">{html.escape(label)}</a>'
        varied = {name: json.dumps(params.get(name)) for name in swept}
        summaries = run_summary(out / label) or [{"precision": "–"}]
        for summary in summaries:
            rows.append({"run": link, **varied, "status": state, **summary})
    columns = ["run", *swept, "status", "precision", "size_mb", "x_fp32", "checks_passed", "top1_vs_fp32",
               "decode_tps", "ttft_ms", "peak_rss_mb"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td>{row.get(c, '') if c == 'run' else html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
        for row in rows)
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>slmops sweep {html.escape(out.name)}</title>"
            f"<style>{style}</style></head><body><h1>slmops sweep: {html.escape(out.name)}</h1>"
            f"<p>{len(runs)} runs varying {html.escape(', '.join(swept))}; each links to its own report.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index


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
        SlmopsError: the folder is not a run (no ``index.html``).
    """
    from toolkit.errors import SlmopsError

    run = Path(run_dir).resolve()
    if not (run / "index.html").is_file():
        raise SlmopsError(f"{run} is not a run folder (no index.html); run `slmops demo` or `slmops run` first.")
    target = Path(out) if out else run.with_suffix(".zip")
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(run.rglob("*")):
            if not file.is_file() or (not with_models and file.suffix in _WEIGHTS):
                continue
            zf.write(file, Path(run.name) / file.relative_to(run))
    partial.replace(target)  # never a half-written archive under the final name
    return target
