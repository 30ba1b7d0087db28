"""Typed, versioned results that travel between stages (one module per result file).

Each result is a frozen dataclass with ``schema_version``, ``to_json()`` and ``from_json()``:
a stage writes one, the next stage (or the report) reads it back through ``from_json``, never
by guessing at a dict's shape or parsing a figure out of text. The fields of every result file
are documented in the docs site's result files reference (``docs/reference/results.md``),
generated from these modules' records and docstrings.
"""

from __future__ import annotations

from slmops.toolkit.core.errors import InputError


class ResultVersionError(InputError):
    """A result file was written by a newer toolkit than this one (its ``schema_version`` is unknown here)."""

    def __init__(self, kind: str, found: object, known: int) -> None:
        self.kind, self.found, self.known = kind, found, known
        super().__init__(f"This {kind} has schema_version {found!r}; this toolkit reads versions 1 to {known}: "
                         "upgrade slmops-toolkit to read it.")


def schema_version(data: dict, kind: str, current: int) -> int:
    """The ``schema_version`` of a loaded result (1 for files written before versions were recorded).

    Raises:
        ResultVersionError: a version this toolkit does not know (newer, or not a whole number).

    Example:
        >>> schema_version({"schema_version": 2}, "test.json", 2)
        2
    """
    found = data.get("schema_version", 1)
    if type(found) is not int or not 1 <= found <= current:
        raise ResultVersionError(kind, found, current)
    return found
