"""The benchmark's sentences: the summary against FP32 and the warnings, rendered from ``bench.json``'s rows."""

from __future__ import annotations

from collections.abc import Sequence

from slmops.toolkit.domain.results.bench import NOISY_CV, BenchFile, BenchRow
from slmops.toolkit.domain.results.checklist import ChecklistReport
from slmops.toolkit.domain.verdicts import TOP1_TARGET, status_at_least
from slmops.toolkit.stages.bench import headline_rows, rows_for


def summary_lines(report: BenchFile, quality: ChecklistReport | None = None, *, baseline: str = "fp32") -> list[str]:
    """One sentence per precision against the baseline precision (Foundry Local rows, shortest prompt).

    Args:
        report: A written ``bench.json``.
        quality: The checklist's result (``test.json``), for top-1 agreement when present.

    Example:
        >>> summary_lines(report)[0]
        'int4: 3.3x fp32 decode speed at 0.37x size'
    """
    by_precision = {r.precision: r for r in headline_rows(rows_for(report, None))}
    base = by_precision.get(baseline)
    top1 = quality.top1_agreement() if quality is not None else {}
    sentences = []
    for precision, row in by_precision.items():
        if base is None or precision == baseline or not base.decode_tps:
            continue
        text = (f"{precision}: {row.decode_tps / base.decode_tps:.1f}x {baseline} decode speed at "
                f"{row.size_mb / base.size_mb:.2f}x size")
        if row.model in top1:
            agreement = top1[row.model]
            status = status_at_least(agreement, TOP1_TARGET, floor=quality.thresholds.top1_min)
            text += f", top-1 agreement {agreement:.3f} ({status}: target >= {TOP1_TARGET})"
        sentences.append(text)
    return sentences


def warnings(rows: Sequence[BenchRow]) -> list[str]:
    """What makes figures less trustworthy, one sentence per cause naming every row it touches.

    Causes: decode that varies between runs, generations that stopped early, visible harness cost.
    """
    def where(r: BenchRow) -> str:
        return f"{r.model} {r.engine} {r.target_prompt_tokens}/{r.target_gen_tokens}/{r.threads}"

    def listed(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")

    noisy = [f"{where(r)} ({r.decode_cv:.0%})" for r in rows if r.noisy]
    short = [f"{where(r)} ({r.gen_tokens:.1f} of {r.target_gen_tokens})" for r in rows
             if r.gen_tokens < r.target_gen_tokens]
    harness = [f"{where(r)} ({r.harness_overhead_pct:.1f}%)" for r in rows if r.harness_overhead_pct >= 1]
    out = []
    if noisy:
        out.append(f"Decode varies over {NOISY_CV:.0%} between runs in {len(noisy)} rows (model engine "
                   f"prompt/gen/threads: {listed(noisy)}); rerun with more --repeats on a quieter machine.")
    if short:
        out.append(f"{len(short)} rows stopped before their asked tokens ({listed(short)}); their decode tokens/s "
                   "is over the tokens they did generate.")
    if harness:
        out.append(f"The harness took 1% or more of decode time in {len(harness)} rows ({listed(harness)}).")
    return out
