"""Shareable reports: tables for notebooks and the run's ``index.html``."""

from __future__ import annotations

import html
import json
import os
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



def _html_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_index(run_dir: str | os.PathLike[str], *, params: dict | None = None,
                status: dict[str, str] | None = None) -> Path:
    """Write ``run_dir/index.html``: links to the rendered notebooks, summary tables, plots.

    Example:
        >>> write_index("outputs/demo").name
        'index.html'
    """
    run = Path(run_dir)
    status = status or {}
    parts = ["<h1>slmops run: " + html.escape(run.name) + "</h1>", "<h2>Notebooks</h2><ul>"]
    for name in NOTEBOOKS:
        state = status.get(name, "ok" if (run / f"{name}.html").is_file() else "not run")
        links = [f'<a href="{name}.html">{name}</a>'] if (run / f"{name}.html").is_file() else [name]
        if (run / f"{name}.ipynb").is_file():
            links.append(f'(<a href="{name}.ipynb">ipynb</a>)')
        parts.append(f"<li>{' '.join(links)}: {html.escape(state)}</li>")
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
        from toolkit.evaluate import summary_rows

        parts += ["<h2>Quality checklist</h2>",
                  _html_table(summary_rows(tests), ["model", "passed", "total", "failed"])]
    bench = read_json(run / "bench.json")
    if bench:
        from toolkit.bench import summary

        parts += ["<h2>Benchmark</h2>", "<ul>" + "".join(f"<li>{html.escape(line)}</li>"
                                                            for line in summary(bench, tests)) + "</ul>",
                  _html_table(bench["rows"], [
                      "model", "engine", "prompt_tokens", "gen_tokens", "ttft_ms", "decode_tps", "decode_tps_sd",
                      "decode_cv", "noisy", "e2e_ms", "peak_rss_mb", "size_mb"]),
                  "<h3>Foundry Local against ONNX Runtime GenAI directly</h3>",
                  _html_table(bench.get("engine_ratios", []), ["model", "target_prompt_tokens", "foundry_decode_tps",
                                                               "direct_decode_tps", "ratio"])]
        meta = bench["metadata"]
        parts.append(f"<p>CPU: {html.escape(str(meta['cpu']))}, {meta['cores']} cores; memory bandwidth "
                     f"{meta.get('memory_bandwidth_gbs', '?')} GB/s; "
                     f"versions: {html.escape(json.dumps(meta['versions']))}; {html.escape(meta['timestamp'])}</p>")
    for png in sorted(run.glob("*.png")):
        parts.append(f'<figure><img src="{png.name}" alt="{png.stem}"><figcaption>{png.stem}</figcaption></figure>')
    if params:
        parts += ["<h2>Parameters</h2>", f"<pre>{html.escape(json.dumps(params, indent=2))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>slmops {html.escape(run.name)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    index = run / "index.html"
    index.write_text(page)
    return index
