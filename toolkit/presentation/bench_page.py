"""Notebook 04's page: the benchmark's tables, the recommendation and the plots, from the typed results."""

from __future__ import annotations

import os
from pathlib import Path

from slmops.toolkit.domain.deployment_choice import Recommendation
from slmops.toolkit.domain.results.bench import BenchFile
from slmops.toolkit.domain.results.checklist import ChecklistReport
from slmops.toolkit.presentation import bench_text, plots
from slmops.toolkit.presentation.report import figure, table

#: The rows' columns, three tables of a dozen or fewer: each fits the notebook's width.
ROW_TABLES = (
    ("model", "engine", "prompt_tokens", "gen_tokens", "threads", "ttft_ms", "ttft_ms_p90", "prefill_tps", "decode_tps",
     "decode_tps_sd", "decode_cv", "noisy"),
    ("model", "engine", "prompt_tokens", "gen_tokens", "tpot_ms", "tpot_ms_p50", "tpot_ms_p90", "e2e_ms",
     "harness_overhead_pct"),
    ("model", "engine", "size_mb", "load_s", "load_rss_mib", "peak_rss_mib", "cpu_percent", "system_cpu_percent"),
)


def benchmark_outputs(results: BenchFile, tests: ChecklistReport | None, recommendation: Recommendation,
                      figures_dir: str | os.PathLike[str]) -> tuple:
    """What notebook 04 shows once the benchmark has run, in order: the summary and warnings, the rows, the
    recommendation with its paired tests, the engine ratios, the plots (saved as PNG in ``figures_dir``) and the
    bandwidth bound.

    Args:
        results: The benchmark's ``bench.json``.
        tests: The run's ``test.json`` (top-1 agreement beside the figures), None when the checklist has not run.
        recommendation: The run's recommendation (:func:`~slmops.toolkit.domain.deployment_choice.recommend`).
        figures_dir: Where the plots are saved (the run folder: the report links them).

    Example:
        >>> display(*benchmark_outputs(results, read_report(run / "test.json"), recommend(load_run(run)), run))
    """
    from IPython.display import Markdown

    lines = bench_text.summary_lines(results, tests) + bench_text.warnings(results.rows)
    return (
        Markdown("\n".join(f"- {line}" for line in lines)),
        *(table(list(results.rows), list(columns)) for columns in ROW_TABLES),
        Markdown("## Recommendation"),
        Markdown(f"**{recommendation.sentence}**"),
        table(recommendation.rows),
        Markdown("Each precision against FP32 per case family (McNemar's exact test):"),
        table(recommendation.paired),
        Markdown("Foundry Local against ONNX Runtime GenAI directly (decode tokens/s; 1.0 means no overhead):"),
        table(list(results.engine_ratios)),
        Markdown("## Speed, latency and memory"),
        *(figure(ax, Path(figures_dir) / f"{stem}.png") for stem, ax in plots.bench_figures(results, tests).items()),
        Markdown("Decode reads every weight once per token, so measured memory bandwidth / model size bounds decode "
                 "speed:"),
        table(list(results.decode_ceiling)),
    )
