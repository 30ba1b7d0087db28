"""Typed, versioned results that travel between stages (one module per result file).

Each result is a frozen dataclass with a ``SCHEMA_VERSION``, written and read by the one codec
(:mod:`slmops.toolkit.core.codec`): a stage writes one, the next stage (or the report) reads it back, never
by guessing at a dict's shape or parsing a figure out of text. The fields of every result file
are documented in the docs site's result files reference (``docs/reference/results.md``),
generated from these modules' records and docstrings.
"""
