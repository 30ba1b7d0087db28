"""The ``slmops`` command: a thin shell over the toolkit's functions (the top layer: it imports any other).

One module per command group (:mod:`~toolkit.cli.pipeline`, :mod:`~toolkit.cli.models`,
:mod:`~toolkit.cli.runs`), what they share in :mod:`~toolkit.cli.common`, the parser and the
entry point in :mod:`~toolkit.cli.app`.
"""

from __future__ import annotations

from toolkit.cli.app import build_parser, main, version
from toolkit.cli.pipeline import int4_options as _int4_options
from toolkit.core.errors import SlmopsError

__all__ = ["SlmopsError", "_int4_options", "build_parser", "main", "version"]
