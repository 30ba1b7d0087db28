"""Plot helpers: ``plot_x(data, *, ax=None) -> Axes``, object-oriented matplotlib, no ``show``."""

from __future__ import annotations

from collections.abc import Sequence


def _axes(ax):
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=(6, 3.5), layout="constrained").subplots()


def plot_sizes(manifests: Sequence[dict], *, ax=None):
    """Bars of size relative to the source model per precision, against the tutorial's table.

    Example:
        >>> plot_sizes([read_manifest("out/int4")]).figure.savefig("sizes.png")
    """
    ax = _axes(ax)
    labels = [m["precision"] for m in manifests]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], [m["size_ratio_vs_source"] for m in manifests], 0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [m["tutorial_size_ratio"] for m in manifests], 0.4, label="tutorial table")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("size / source FP32 size")
    ax.set_title("Model size by precision")
    ax.legend()
    return ax


def plot_metric(rows: Sequence[dict], metric: str = "decode_tps", *, ax=None, ylabel: str | None = None):
    """Grouped bars of one benchmark metric per model, one bar per prompt length.

    Example:
        >>> plot_metric(rows, "ttft_ms").figure.savefig("ttft.png")
    """
    ax = _axes(ax)
    models = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["target_prompt_tokens"] for r in rows})
    width = 0.8 / max(1, len(lengths))
    for i, length in enumerate(lengths):
        cells = [next((r for r in rows if r["model"] == m and r["target_prompt_tokens"] == length), {})
                 for m in models]
        values = [cell.get(metric, 0) for cell in cells]
        errors = [cell.get(f"{metric}_sd", 0) for cell in cells]
        ax.bar([x + i * width for x in range(len(models))], values, width, yerr=errors,
               label=f"~{length} prompt tokens")
    ax.set_xticks([x + width * (len(lengths) - 1) / 2 for x in range(len(models))], models)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(f"{ylabel or metric} by model")
    ax.legend(fontsize="small")
    return ax
