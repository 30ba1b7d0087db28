"""A benchmark's result as a section of the documentation's benchmarks page: dated, with the machine and command.

Measured figures live in one place, ``docs/benchmarks.md``, and each of its tables says when it
was measured, on which machine (CPU model, the instruction sets that decide quantized speed,
cores, memory) and by which exact command, so a reader can tell a stale figure and reproduce
it. A benchmark script renders its table with :func:`section` and, given ``--markdown FILE``,
appends it to ``FILE`` (:func:`append`) to be pasted into the page::

    .venv/bin/python benchmarks/threads.py --markdown /tmp/threads.md
"""

from __future__ import annotations

import datetime
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slmops.toolkit.core import measure, system

#: The instruction sets that decide quantized MatMul speed on a CPU (named as /proc/cpuinfo does).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


def machine_line() -> str:
    """This machine in one line: CPU model, the instruction sets of :data:`ISA_FLAGS` it has, cores, memory."""
    info = measure.machine()
    flags = [flag for flag in ISA_FLAGS if flag in system.cpu_flags()]
    return (f"{info['cpu']}; {', '.join(flags) or 'none of ' + ', '.join(ISA_FLAGS)}; "
            f"{info['physical_cores']} cores ({info['logical_cpus']} logical), {info['memory_gb']} GB")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that ran, as it can be pasted into a shell."""
    args = list(sys.argv if argv is None else argv)
    return "python " + shlex.join(args)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (cells as ``str()``; pipes escaped)."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)])


def section(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], *, note: str = "",
            argv: Sequence[str] | None = None, when: datetime.date | None = None) -> str:
    """A benchmarks-page section: heading, date, machine, command, the table and a note.

    Example:
        >>> print(section("Threads", ["x", "y"], [[1, 2]], argv=["b.py"], when=datetime.date(2026, 1, 2)))  # doctest: +ELLIPSIS
        ## Threads
        <BLANKLINE>
        Measured 2026-01-02. Machine: ...; ... cores (... logical), ... GB. Command: `python b.py`.
        <BLANKLINE>
        | x | y |
        |---|---|
        | 1 | 2 |
        <BLANKLINE>
    """
    day = (when or datetime.datetime.now(datetime.UTC).date()).isoformat()
    parts = [f"## {title}", "", f"Measured {day}. Machine: {machine_line()}. Command: `{command_line(argv)}`.", "",
             table(headers, rows)]
    if note:
        parts += ["", note]
    return "\n".join(parts) + "\n"


def append(path: str | Path | None, text: str) -> None:
    """Append ``text`` to ``path`` (nothing when ``path`` is None), with a blank line before it."""
    if path is None:
        return
    with Path(path).open("a", encoding="utf-8") as out:
        out.write("\n" + text)
