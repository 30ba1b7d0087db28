"""Plot helpers: ``plot_x(data, *, ax=None) -> Axes``, object-oriented matplotlib, no ``show``."""

from __future__ import annotations

from collections.abc import Sequence

from slmops.toolkit.domain.results.bench import BenchFile, BenchRow
from slmops.toolkit.domain.results.checklist import ChecklistReport
from slmops.toolkit.domain.results.conversion import Manifest
from slmops.toolkit.stages.bench import headline_rows, rows_for


def _axes(ax, figsize: tuple[float, float] = (6, 3.5)):
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").subplots()


def plot_sizes(manifests: Sequence[Manifest], *, ax=None):
    """Bars of size relative to the FP32 build per precision, against the tutorial's table.

    Example:
        >>> plot_sizes([read_manifest("out/int4")]).figure.savefig("sizes.png")
    """
    ax = _axes(ax)
    labels = [m.precision for m in manifests]
    xs = range(len(labels))
    measured = ax.bar([x - 0.2 for x in xs], [m.size_ratio_vs_fp32 for m in manifests], 0.4, label="measured")
    ax.bar([x + 0.2 for x in xs], [m.tutorial_size_ratio for m in manifests], 0.4, label="tutorial table")
    ax.bar_label(measured, fmt="%.2f", fontsize="small")
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("size / FP32 build")
    ax.set_title("Model size by precision")
    ax.legend()
    return ax


def plot_loss(losses: Sequence[float], *, ax=None):
    """The fine-tune's training loss per step (log scale: it falls by orders of magnitude).

    Example:
        >>> plot_loss([3.2, 1.1, 0.2, 0.01]).figure.savefig("finetune_loss.png")
    """
    ax = _axes(ax)
    ax.plot(range(1, len(losses) + 1), losses, marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title("LoRA fine-tune")
    return ax


def plot_recipes(results: Sequence, *, size_target: float = 0.25, top1_target: float = 0.85, ax=None):
    """INT4 recipes as points: size against FP32 (x) and top-1 agreement (y), the targets as a box.

    Each point is named in the legend beside the axes (recipes of one size and agreement sit on top of each
    other, where labels on the points would overlap).

    Example:
        >>> plot_recipes(compare_int4_recipes(model, "out/recipes", "out/fp32")).figure.savefig("recipes.png")
    """
    ax = _axes(ax, figsize=(8.5, 3.8))
    ax.axvspan(0, size_target, ymin=0, ymax=1, alpha=0.08, color="green")
    ax.axhline(top1_target, color="green", linestyle="--", linewidth=1, label=f"targets: <= {size_target}x, "
               f">= {top1_target} agreement")
    for r in results:  # a recipe the parity gate refused: a cross at the gate's figures
        label = "refused by the parity gate" if r.refused else f"{r.decode_tps:.0f} tok/s"
        if getattr(r, "lora_in_graph", False):  # measured beside the merged recipes, never adopted
            label += ", LoRA in the graph (not adopted)"
        ax.scatter(r.size_ratio_vs_fp32, r.top1_agreement, s=40, marker="x" if r.refused else "o",
                   label=f"{r.recipe}: {label}")
    ax.set_xlim(0, max(0.5, max(r.size_ratio_vs_fp32 for r in results) * 1.1))
    ax.set_ylim(min(0.5, min(r.top1_agreement for r in results) - 0.05), 1.03)
    ax.set_xlabel("size / FP32 build")
    ax.set_ylabel("top-1 agreement with FP32")
    ax.set_title("INT4 recipes: size against fidelity")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return ax


def plot_metric(rows: Sequence[BenchRow], metric: str = "decode_tps", *, ax=None, ylabel: str | None = None):
    """Grouped bars of one benchmark metric (a :class:`BenchRow` field) per model, one bar per prompt length.

    Its spread (the ``<metric>_sd`` field, where the row has one) is drawn as error bars.

    Example:
        >>> plot_metric(rows, "ttft_ms").figure.savefig("ttft.png")
    """
    ax = _axes(ax)
    models = list(dict.fromkeys(r.model for r in rows))
    lengths = sorted({r.target_prompt_tokens for r in rows})
    width = 0.8 / max(1, len(lengths))
    for i, length in enumerate(lengths):
        cells = [next((r for r in rows if r.model == m and r.target_prompt_tokens == length), None) for m in models]
        values = [getattr(cell, metric, 0) for cell in cells]
        errors = [getattr(cell, f"{metric}_sd", 0) for cell in cells]
        ax.bar([x + i * width for x in range(len(models))], values, width, yerr=errors,
               label=f"~{length} prompt tokens")
    ax.set_xticks([x + width * (len(lengths) - 1) / 2 for x in range(len(models))], models)
    ax.set_ylabel(ylabel or metric)
    ax.set_title(f"{ylabel or metric} by model")
    ax.legend(fontsize="small")
    return ax


def plot_lines(rows: Sequence[BenchRow], x: str, y: str, *, group: str = "model", ax=None, xlabel: str | None = None,
               ylabel: str | None = None, title: str | None = None):
    """One line per ``group`` value of ``y`` against ``x``, each a :class:`BenchRow` field (the first row wins where a
    group repeats an ``x``).

    Example:
        >>> plot_lines(rows, "target_prompt_tokens", "e2e_ms").figure.savefig("latency.png")
    """
    ax = _axes(ax)
    for key in dict.fromkeys(getattr(r, group) for r in rows):
        points: dict = {}
        for r in rows:
            if getattr(r, group) == key:
                points.setdefault(getattr(r, x), getattr(r, y))
        xs = sorted(points)
        ax.plot(xs, [points[v] for v in xs], marker="o", label=str(key))
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title or f"{ylabel or y} against {xlabel or x}")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return ax


def plot_rss(reports: Sequence, *, ax=None):
    """Process RSS after each request of the checklist's memory check, one line per model.

    Example:
        >>> plot_rss([run_checklist("smollm2-int4")]).figure.savefig("rss.png")
    """
    ax = _axes(ax)
    for r in reports:
        if r.rss_mib:
            ax.plot(range(1, len(r.rss_mib) + 1), r.rss_mib, label=r.model)
    ax.set_xlabel("request (the check compares each window's high-water mark after the first, warm-up, window)")
    ax.set_ylabel("process RSS (MiB)")
    ax.set_title("Memory over requests")
    ax.legend(fontsize="small")
    return ax


def plot_per_token(reports: Sequence, *, ax=None):
    """Milliseconds per output token against input length, one line per model.

    Example:
        >>> plot_per_token([run_checklist("smollm2-int4")]).figure.savefig("per_token.png")
    """
    ax = _axes(ax)
    for r in reports:
        if r.ms_per_token:
            lengths = sorted(r.ms_per_token)
            ax.plot(lengths, [r.ms_per_token[n] for n in lengths], marker="o", label=r.model)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("input tokens")
    ax.set_ylabel("ms per output token")
    ax.set_title("Time per output token over input length")
    ax.legend(fontsize="small")
    return ax


def plot_tradeoff(report: BenchFile, quality: ChecklistReport | None = None, *, engine: str = "foundry-local", ax=None):
    """Size against decode speed per model (shortest prompt), labelled with top-1 agreement.

    Example:
        >>> plot_tradeoff(read_results("bench.json"), read_report("test.json")).figure.savefig("t.png")
    """
    ax = _axes(ax)
    top1 = quality.top1_agreement() if quality is not None else {}
    for r in headline_rows(rows_for(report, None), engine):
        ax.scatter(r.size_mb, r.decode_tps, s=50)
        label = r.precision + (f"\ntop-1 {top1[r.model]:.3f}" if r.model in top1 else "")
        ax.annotate(label, (r.size_mb, r.decode_tps), xytext=(5, 3), textcoords="offset points",
                    fontsize="small")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"Size, speed and quality ({engine})")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    return ax


def bench_figures(report: BenchFile, quality: ChecklistReport | None = None) -> dict[str, object]:
    """The benchmark's plots (matplotlib Axes) by file stem: speed, latency, memory, sweeps, trade-off.

    Sweeps appear only when the run swept them (several generation lengths or thread counts).

    Example:
        >>> for stem, ax in bench_figures(report).items():
        ...     ax.figure.savefig(f"{stem}.png")
    """
    engine = "foundry-local" if rows_for(report) else "ort-genai"
    main = rows_for(report, engine)
    first_gen = [r for r in main if r.target_gen_tokens == main[0].target_gen_tokens]
    out = {
        "decode_tps": plot_metric(main, "decode_tps", ylabel="decode tokens/s"),
        "ttft_ms": plot_metric(main, "ttft_ms", ylabel="time to first token (ms)"),
        "latency_vs_prompt": plot_lines(
            first_gen, "prompt_tokens", "e2e_ms",
            xlabel="prompt tokens", ylabel="end-to-end latency (ms)",
            title=f"Latency against prompt length ({first_gen[0].target_gen_tokens} generated tokens)"),
        "peak_rss_mib": plot_metric(main, "peak_rss_mib", ylabel="peak process RSS (MiB)"),
    }
    if len({r.target_gen_tokens for r in report.rows}) > 1:
        out["latency_vs_generation"] = plot_lines(
            [r for r in main if r.target_prompt_tokens == main[0].target_prompt_tokens],
            "target_gen_tokens", "e2e_ms", xlabel="generated tokens", ylabel="end-to-end latency (ms)",
            title="Latency against generation length")
    direct = rows_for(report, "ort-genai")
    if len({r.threads for r in direct}) > 1:
        out["decode_vs_threads"] = plot_lines(
            [r for r in direct if r.target_prompt_tokens == direct[0].target_prompt_tokens
             and r.target_gen_tokens == direct[0].target_gen_tokens], "threads", "decode_tps",
            xlabel="intra-op threads", ylabel="decode tokens/s", title="Decode speed against threads (direct engine)")
    out["tradeoff"] = plot_tradeoff(report, quality, engine=engine)
    return out
