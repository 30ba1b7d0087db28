"""The one codec for the toolkit's records: result files and the payloads its children exchange.

A record is a frozen dataclass. :func:`dump` turns it into JSON-able data (tuples become lists,
StrEnums their values, nested records dicts) and :func:`load` builds it back, checking every field's
type with pydantic (a ``TypeAdapter`` over the dataclass: lax, so a JSON list fills a tuple and an
int a float; keys the record does not declare are ignored). A wrong shape is refused as
:class:`RecordError`, one line naming the record, the field and the problem.

A record that is written to a file declares its format's version and, when older versions must
still be read, how to bring them up to date::

    @dataclass(frozen=True)
    class RunRecord:
        SCHEMA_VERSION: ClassVar[int] = 3       # dump() writes {"schema_version": 3, ...}
        KIND: ClassVar[str] = "run.json"         # how errors name it

        @classmethod
        def upgrade(cls, data: dict, version: int) -> dict:
            \"\"\"A version-``version`` file's data in the current shape.\"\"\"
            ...

:func:`load` reads ``schema_version`` (1 when absent: files written before versions were recorded),
refuses a newer one (:class:`ResultVersionError`), and calls ``upgrade`` for an older one (also for
data that is not a JSON object, taken as version 1: a file that was once a bare list): the one
place a format's history is handled. Child payloads declare no version (parent and child are the
same install) and are dumped without one. A field whose JSON key is no Python name (``from``) declares it
with :func:`json_key`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, TypeVar

import pydantic

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError

T = TypeVar("T")

#: The key under which a record's format version is written.
VERSION_KEY = "schema_version"


class RecordError(InputError):
    """Data that does not fit the record it is read as (a field missing or of the wrong type)."""


class ResultVersionError(InputError):
    """A result file was written by a newer toolkit than this one (its ``schema_version`` is unknown here)."""

    def __init__(self, kind: str, found: object, known: int) -> None:
        self.kind, self.found, self.known = kind, found, known
        super().__init__(f"This {kind} has schema_version {found!r}; this toolkit reads versions 1 to {known}: "
                         "upgrade slmops-toolkit to read it.")


@functools.cache
def _adapter(cls: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def kind_of(cls: Any) -> str:
    """How errors name a record type: its ``KIND``, else its class name.

    Example:
        >>> kind_of(int)
        'int'
    """
    return getattr(cls, "KIND", None) or getattr(cls, "__name__", None) or str(cls)


def version_of(data: dict, kind: str, current: int) -> int:
    """The ``schema_version`` of loaded data (1 for files written before versions were recorded).

    Raises:
        ResultVersionError: a version this toolkit does not know (newer, or not a whole number).

    Example:
        >>> version_of({"schema_version": 2}, "test.json", 2)
        2
    """
    found = data.get(VERSION_KEY, 1)
    if type(found) is not int or not 1 <= found <= current:
        raise ResultVersionError(kind, found, current)
    return found


def _declared_type(record: object) -> Any:
    """The type to serialize ``record`` as: a list or dict of one record type as a list or dict of it.

    pydantic serializes a bare container's items by inference, which writes NaN and infinity as null;
    declared as ``list[Row]`` they stay as Python's json module writes them (a garbage build's KL
    divergence is not finite, and must reach its check as such).
    """
    items = list(record.values()) if isinstance(record, dict) else record
    if isinstance(record, (list, dict)) and items and len({type(item) for item in items}) == 1:
        item = type(items[0])
        return dict[Any, item] if isinstance(record, dict) else list[item]
    return type(record)


def json_key(key: str) -> Any:
    """A field's JSON key when it cannot be the field's name: :func:`load` reads it and :func:`dump` writes it::

        @dataclass(frozen=True)
        class AddedStopToken:
            origin: Annotated[str, codec.json_key("from")]      # {"from": ...} in the file
    """
    return pydantic.Field(alias=key)


def dump(record: object) -> Any:
    """A record as JSON-able data; a versioned record's dict starts with its ``schema_version``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Job:
        ...     ids: tuple[int, ...]
        >>> dump(Job((1, 2)))
        {'ids': [1, 2]}
    """
    data = _adapter(_declared_type(record)).dump_python(record, mode="json", by_alias=True)
    version = getattr(type(record), "SCHEMA_VERSION", None)
    if version is not None and isinstance(data, dict):
        return {VERSION_KEY: version, **data}
    return data


def load(cls: type[T], data: object, *, kind: str | None = None) -> T:
    """``data`` (as :func:`dump` or an earlier version wrote it) as a ``cls``.

    ``cls`` is a record class or any type pydantic reads (``list[Row]``, ``dict[str, float]``).

    Raises:
        ResultVersionError: the data's ``schema_version`` is newer than ``cls.SCHEMA_VERSION``.
        RecordError: the data does not fit ``cls`` (names the field and the problem).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Job:
        ...     ids: tuple[int, ...]
        >>> load(Job, {"ids": [1, 2]})
        Job(ids=(1, 2))
    """
    kind = kind or kind_of(cls)
    current = getattr(cls, "SCHEMA_VERSION", None)
    if current is not None:
        if isinstance(data, dict):
            version = version_of(data, kind, current)
            if version < current and hasattr(cls, "upgrade"):
                data = cls.upgrade(dict(data), version)
        elif hasattr(cls, "upgrade"):  # a version-1 file of another shape (a bare list, say)
            data = cls.upgrade(data, 1)
        else:
            raise RecordError(f"{kind} is not a JSON object (found {type(data).__name__}); "
                              "write it again with the step that made it.")
    try:
        return _adapter(cls).validate_python(data)
    except pydantic.ValidationError as exc:
        raise RecordError(f"{kind} does not hold a valid {kind_of(cls)}: {_first_problem(exc)}; "
                          "write it again with the step that made it.") from None


def _first_problem(exc: pydantic.ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "the top level"
    more = exc.error_count() - 1
    return f"{where}: {error['msg'].lower()}" + (f" (and {more} more)" if more else "")


def read(cls: type[T], path: str | os.PathLike[str], *, missing: str | None = None) -> T:
    """The record of type ``cls`` in the JSON file ``path``.

    Args:
        cls: The record class.
        path: The file.
        missing: The message when there is no such file (what to run to make it); None: a plain "no such file".

    Raises:
        InputError: no such file, or not UTF-8 JSON.
        ResultVersionError: written by a newer toolkit.
        RecordError: it does not hold a ``cls``.
    """
    file = Path(path)
    data = artifacts.read_json(file)
    if data is None:
        raise InputError(missing or f"{file}: no such file.")
    return load(cls, data, kind=str(file))


def write(path: str | os.PathLike[str], record: object) -> Path:
    """Write ``record`` to ``path`` as indented UTF-8 JSON, atomically (:func:`~slmops.toolkit.core.artifacts.write_json`)."""
    return artifacts.write_json(path, dump(record))
