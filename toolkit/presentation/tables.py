"""Plain-text tables for the terminal: one renderer, so every command's table reads the same."""

from __future__ import annotations

from collections.abc import Sequence


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
