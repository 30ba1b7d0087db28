"""The ``slmops`` command: a thin shell over the toolkit's functions (the top layer: it imports any other).

One module per command group (:mod:`~slmops.toolkit.cli.pipeline`, :mod:`~slmops.toolkit.cli.models`,
:mod:`~slmops.toolkit.cli.runs`), what they share in :mod:`~slmops.toolkit.cli.common`, the parser and the
entry point in :mod:`~slmops.toolkit.cli.app`.
"""

from __future__ import annotations

from slmops.toolkit.cli.app import build_parser, main, version

__all__ = ["build_parser", "main", "version"]
