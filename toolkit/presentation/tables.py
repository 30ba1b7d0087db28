"""Tables: plain text for the terminal, HTML for the notebooks and the report (one renderer each).

Every command's text table and every HTML table, in a notebook or on a report page, is made
here, so they read the same: headings in words with units, no index column, missing values as
``-`` (never ``NaN``), text wrapped and never cut.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from html import escape


def _cell(value: object, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if fmt and isinstance(value, int | float):
        return format(value, fmt)
    return str(value)


def text_table(rows: Sequence[dict], columns: Sequence[tuple[str, str] | tuple[str, str, str]]) -> str:
    """Rows as an aligned text table.

    Args:
        rows: One dict per row.
        columns: ``(key, heading)`` or ``(key, heading, format)`` per column, e.g.
            ``("decode_tps", "DECODE tok/s", ".1f")``. Numbers align right, text left.

    Example:
        >>> print(text_table([{"name": "a", "mb": 1.5}], [("name", "NAME"), ("mb", "SIZE MB", ".1f")]))
        NAME  SIZE MB
        a         1.5
    """
    specs = [(c[0], c[1], c[2] if len(c) > 2 else "") for c in columns]
    cells = [[_cell(row.get(key), fmt) for key, _, fmt in specs] for row in rows]
    numeric = [all(isinstance(row.get(key), int | float) and not isinstance(row.get(key), bool)
                   for row in rows if row.get(key) is not None) for key, _, _ in specs]
    widths = [max([len(heading), *(len(line[i]) for line in cells)]) for i, (_, heading, _) in enumerate(specs)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([heading for _, heading, _ in specs]), *(line(values) for values in cells)])


# --- HTML: one renderer for the notebooks and the report ----------------------------------------------

#: Column headings in words, with units; a column without one shows its name with spaces for underscores.
HEADINGS = {
    "size_mb": "size (MB)", "x_fp32": "× FP32", "checks_passed": "checks passed", "top1_agreement": "top-1 vs FP32",
    "decode_tps": "decode (tok/s)", "ttft_ms": "first token (ms)", "ttft_typical_ms": "first token, typical prompt (ms)",
    "peak_rss_mib": "peak RSS (MiB)", "peak_rss_mb": "peak RSS (MB)",
    "tpot_ms": "time per output token (ms)", "tpot_ms_p50": "time per output token p50 (ms)",
    "tpot_ms_p90": "time per output token p90 (ms)", "ttft_ms_p50": "first token p50 (ms)",
    "ttft_ms_p90": "first token p90 (ms)", "prompt_tokens": "prompt tokens", "gen_tokens": "generated tokens",
    "decode_tps_sd": "decode sd (tok/s)", "decode_cv": "decode CV", "e2e_ms": "end to end (ms)",
    "cpu_percent": "CPU (%)", "system_cpu_percent": "system CPU (%)", "size_ratio_vs_fp32": "× FP32",
    "kl_divergence": "KL (nats)", "top1_agreement_vs_source": "top-1 vs source",
    "kl_divergence_vs_source": "KL vs source (nats)", "target_prompt_tokens": "prompt tokens (asked)",
    "target_gen_tokens": "generated tokens (asked)", "foundry_decode_tps": "Foundry decode (tok/s)",
    "direct_decode_tps": "direct decode (tok/s)", "change_pct": "change (%)", "wall_s": "wall (s)",
    "vs_tutorial": "vs tutorial", "tutorial_x": "tutorial × FP32", "predicted_peak_mib": "predicted peak (MiB)",
    "threads_speedup": "decode × default threads", "heldout": "held-out", "structured": "format with response_format",
    "threads_probe": "probe (threads: decode, first token)", "ceiling_tps": "bound (tok/s)",
    "percent_of_ceiling": "% of bound", "bandwidth_gbs": "bandwidth (GB/s)",
    "weights_read_mb": "weights read per token (MB)", "above_bound_because": "above the bound because",
    "decode_ratio": "decode × in-process", "ttft_overhead_ms": "first token added (ms)",
    "in_process_decode_tps": "in-process decode (tok/s)", "foundry_ttft_ms": "Foundry first token (ms)",
    "direct_ttft_ms": "direct first token (ms)", "setup_ms": "session (ms)", "template_ms": "template + tokenizer (ms)",
    "prefill_ms": "prefill + first token (ms)", "harness_ms": "harness (ms)", "runtime_other_ms": "runtime other (ms)",
    "unmeasured": "not measurable apart", "endpoint_decode_tps": "endpoint decode (tok/s)",
    "in_process_ttft_ms": "in-process first token (ms)", "endpoint_ttft_ms": "endpoint first token (ms)",
    "prefill_tps": "prefill (tok/s)", "load_s": "load (s)", "load_rss_mib": "RSS after load (MiB)",
    "harness_overhead_pct": "harness (% of decode)", "perplexity": "perplexity", "ratio": "ratio",
    "tool_call": "tool calls", "tool_call_heldout": "tool calls, held-out", "model_id": "model id",
    "perplexity_ratio": "perplexity (× FP32's)", "p_value": "p-value", "reference_only": "only FP32 passes (cases)",
    "candidate_only": "only this build passes (cases)", "retention": "retained general answers",
    "bits_per_weight": "bits per weight", "parity_top1_agreement": "parity gate: top-1 vs source",
    "parity_kl_divergence": "parity gate: KL vs source (nats)", "lora_in_graph": "LoRA in the graph (shown, not adopted)",
}

#: The stylesheet a notebook's table carries (the report's pages have theirs): cells wrap between words, never cut
#: and never letter by letter (a squeezed column broke "browser" into one letter a line); a table wider than the
#: notebook scrolls in its own box instead of being clipped.
NOTEBOOK_STYLE = (
    "<style>.table-wrap{max-width:100%;overflow-x:auto}table.slmops{border-collapse:collapse;margin:.3em 0}"
    "table.slmops td,table.slmops th{border:1px solid #ccc;padding:3px 7px;vertical-align:top;white-space:normal;"
    "overflow-wrap:break-word}table.slmops th{background:#f4f4f4;text-align:left}"
    "table.slmops td.num{text-align:right;white-space:nowrap}table.slmops td.text{text-align:left;max-width:40em}"
    "table.slmops td.good{background:#e6f4ea;color:#0b6b2b}table.slmops td.bad{background:#fdecea;color:#a50e0e;"
    "font-weight:bold}details.slmops summary{cursor:pointer;padding:2px 0}</style>")


class Html(str):
    """HTML text that Jupyter displays as HTML (and a page includes as it is)."""

    def _repr_html_(self) -> str:
        return str(self)

    def __html__(self) -> str:  # Jinja2 includes it as markup, not as text to escape
        return str(self)

    def __repr__(self) -> str:  # a notebook's text/plain beside the table: short, not the markup again
        return f"<HTML table, {self.count('<tr>') - self.count('<thead>')} rows>"


def heading(column: str) -> str:
    """A column's heading in words (with its unit).

    Example:
        >>> heading("decode_tps"), heading("checks_failed")
        ('decode (tok/s)', 'checks failed')
    """
    return HEADINGS.get(column, column.replace("_", " "))


def cell_text(value: object) -> str:
    """A value as a cell shows it: numbers rounded for reading, nothing missing shown as ``NaN``.

    A whole number is shown whole, a float as an int (a mean of token counts, 4.0, reads as 4); else whole above
    100, one decimal above 10, two below, three significant digits when tiny; a missing value (None, NaN, empty)
    is ``-``; a bool is yes or no; text is kept whole.

    Example:
        >>> [cell_text(v) for v in (None, float("nan"), 4.0, 123.4, 12.34, 0.6659, 0.0123, True, "reference")]
        ['-', '-', '4', '123', '12.3', '0.67', '0.0123', 'yes', 'reference']
    """
    if value is None or value in ("", "–") or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        size = abs(value)
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return (f"{value:.0f}" if size >= 100 or value.is_integer() else f"{value:.1f}" if size >= 10
                else f"{value:.2f}" if size >= 0.1 or size == 0 else f"{value:.3g}")
    if isinstance(value, list | tuple):
        return "; ".join(cell_text(v) for v in value)
    return str(value)


def as_rows(rows: Iterable[object]) -> list[dict]:
    """Rows as dicts: a dict as it is, a dataclass by its fields (its ``table_row()`` when it has one: a row that
    holds another record shown flat)."""
    out = []
    for row in rows:
        if isinstance(row, dict):
            out.append(row)
        elif hasattr(row, "table_row"):
            out.append(row.table_row())
        elif dataclasses.is_dataclass(row) and not isinstance(row, type):
            out.append(dataclasses.asdict(row))
        else:
            raise TypeError(f"a table row is a dict or a dataclass, not {type(row).__name__}")
    return out


def html_table(rows: Iterable[object], columns: Sequence[str] | None = None, *,
               marks: dict[str, tuple[str, dict[str, str]]] | None = None, style: bool = True,
               css_class: str = "") -> Html:
    """Rows as an HTML table: headings in words with units, no index column, every cell whole (wrapped, never cut).

    Args:
        rows: Dicts (or dataclasses), one per row.
        columns: The columns, in order (default: every key of the rows, in first-seen order); a
            column no row has is left out.
        marks: Per column, ``(key, {value: "good" or "bad"})``: the cell's colour, read from the row's
            typed field ``key`` (never from the words shown), so a printed page still says it in words.
        style: Carry the stylesheet (for a notebook; the report's pages link their own).
        css_class: A class the table carries besides ``slmops`` (for a page or a test to find it by).

    Example:
        >>> "<th>decode (tok/s)</th>" in html_table([{"decode_tps": 12.5}])
        True
    """
    rows = as_rows(rows)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    shown = [c for c in (columns if columns is not None else keys) if c in keys or not rows]
    marks = marks or {}
    lines = [f'<div class="table-wrap"><table class="{escape(f"slmops {css_class}".strip())}">', "<thead><tr>"
             + "".join(f"<th>{escape(heading(c))}</th>" for c in shown) + "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = []
        for column in shown:
            value = row.get(column)
            kind = "num" if isinstance(value, int | float) and not isinstance(value, bool) else "text"
            rule = marks.get(column)
            mark = rule[1].get(str(row.get(rule[0])), "") if rule else ""
            cells.append(f'<td class="{kind}{" " + mark if mark else ""}">{escape(cell_text(value))}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table></div>")
    return Html((NOTEBOOK_STYLE if style else "") + "\n".join(lines))


def html_details(sections: Sequence[tuple[str, str, bool]], *, style: bool = True) -> Html:
    """Collapsible sections: ``(summary, inner HTML, open)`` each, a ``<details>`` per section.

    The summary is text (escaped); the inner HTML is rendered already (e.g. :func:`html_table` without style).
    """
    parts = [f'<details class="slmops"{" open" if opened else ""}><summary>{escape(summary)}</summary>{inner}'
             "</details>" for summary, inner, opened in sections]
    return Html((NOTEBOOK_STYLE if style else "") + "\n".join(parts))
