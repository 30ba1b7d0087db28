"""The documentation site's reference pages, generated from the code at every build.

mkdocs runs this file as a hook (``hooks:`` in ``mkdocs.yml``). A page holding a marker line
such as ``<!-- generated: cli -->`` gets the generated Markdown in its place:

- ``cli``: every ``slmops`` command and option, read from the argparse parser itself
  (:func:`slmops.toolkit.cli.app.build_parser`), with the help and defaults ``--help`` prints;
- ``params``: every run parameter of :class:`slmops.toolkit.domain.run_params.RunParams` (type,
  default, allowed values, help);
- ``results``: every result file from its typed records (``slmops.toolkit.domain.results`` and
  ``compare.json``'s records): the version it is written at, its history and each field with
  its type and meaning, taken from the records' Google-style ``Attributes:`` sections.

So the reference cannot drift from the code; ``tests/test_docs.py`` checks the CLI page against
the live parser. Run it by hand to print one page: ``python scripts/docs_reference.py cli``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path
from types import ModuleType

import griffe
from griffe._internal.docstrings import google
from mkdocs.plugins import event_priority

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from slmops.toolkit.cli import app
from slmops.toolkit.cli.common import GROUP_TITLES, Group
from slmops.toolkit.domain import run_params

ROOT = Path(__file__).resolve().parent.parent

#: Where the Python API pages read the source: ``slmops/toolkit`` and ``slmops/widgets`` as links to the
#: repository's ``toolkit/`` and ``widgets/`` (the import names setuptools' package-dir maps them to), so griffe
#: reads them statically, importing nothing. ``mkdocs.yml`` names it in the handler's ``paths``.
API_SOURCES = ROOT / "build" / "docs-api"

MARKER = re.compile(r"^<!-- generated: (?P<what>[a-z]+) -->$", re.MULTILINE)

#: Each result file (or files), the module whose docstring tells its history and version, and its records in reading
#: order (a dotted name: a record another module defines).
RESULT_FILES = (
    (("test.json",), "slmops.toolkit.domain.results.checklist_file",
     ("ChecklistFile", "ModelSummary", "RateSummary", "ModelSeries", "slmops.toolkit.domain.results.checklist.CheckResult",
      "slmops.toolkit.domain.results.checklist.Thresholds", "slmops.toolkit.domain.results.checklist.QualityRecord", "RetentionEntry",
      "slmops.toolkit.domain.results.checklist.ControlResult", "slmops.toolkit.domain.results.checklist.Check", "slmops.toolkit.domain.results.checklist.Verdict",
      "slmops.toolkit.domain.results.checklist.Bound", "slmops.toolkit.domain.results.checklist.Unit")),
    (("bench.json", "bench.csv"), "slmops.toolkit.domain.results.bench",
     ("BenchFile", "slmops.toolkit.domain.results.bench_metadata.BenchMetadata",
      "slmops.toolkit.domain.results.bench_metadata.Bandwidth", "BenchRow", "TimedRun", "EngineRatio", "EndpointRatio",
      "TtftLine", "CeilingRow")),
    (("registered.json",), "slmops.toolkit.domain.results.registration",
     ("RegisteredFile", "RegisteredModel", "ThreadSpeed")),
    (("models/recipes/recipes.json",), "slmops.toolkit.domain.results.recipes", ("RecipeResult",)),
    (("models/convert.json", "models/PRECISION/manifest.json"), "slmops.toolkit.domain.results.conversion",
     ("Manifest", "MemoryRecord", "ParityGate", "AdapterFile", "BuildCacheEntry", "WeightSummary",
      "slmops.toolkit.domain.options.Int4Options", "slmops.toolkit.domain.quant_plan.QuantPlan", "slmops.toolkit.domain.parity.ParityCheck",
      "slmops.toolkit.domain.parity.SequenceRead", "slmops.toolkit.domain.parity.Tolerance",
      "slmops.toolkit.domain.results.merge.MergeRecord", "slmops.toolkit.domain.results.merge.MergeCheck",
      "slmops.toolkit.domain.results.merge.VocabSizes", "slmops.toolkit.domain.results.merge.TokenizerOrigin")),
    (("compare.json",), "slmops.toolkit.presentation.compare",
     ("Comparison", "ParamChange", "slmops.toolkit.domain.results.deployment.PrecisionFigures", "SizeChange",
      "QualityChange", "VerdictChange", "TimingChange", "slmops.toolkit.domain.results.deployment.TimingJudgement",
      "slmops.toolkit.domain.deployment_choice.RunFigures", "slmops.toolkit.domain.results.deployment.Recommendation",
      "slmops.toolkit.domain.results.deployment.PrecisionOutcome", "slmops.toolkit.domain.results.deployment.Outcome")),
    (("placements.json",), "slmops.toolkit.domain.results.sweep", ("Placement",)),
)


# --- text helpers ------------------------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """``text`` safe inside a Markdown table cell (one line; pipes, angle brackets and asterisks escaped)."""
    flat = " ".join(str(text).split())
    parts = flat.split("`")
    for i in range(0, len(parts), 2):  # outside code spans only
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                    .replace("*", r"\*").replace("[", r"\[").replace("]", r"\]"))
    return "`".join(parts).replace("|", r"\|")


def _rst_to_md(text: str) -> str:
    """A docstring's reStructuredText roles and literals as Markdown code spans."""
    text = re.sub(r":(?:func|class|data|meth|attr|mod|exc):`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return text.replace("::\n", ":\n")


def _type_name(kind: object) -> str:
    if isinstance(kind, type) and not typing.get_args(kind):
        return kind.__name__
    return str(kind).replace("typing.", "").replace("slmops.toolkit.", "").replace("NoneType", "None")


# --- the CLI -----------------------------------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option_rows(parser: argparse.ArgumentParser, *, leave_out: frozenset[str] = frozenset()) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if (isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)) or action.help == argparse.SUPPRESS
                or leave_out.intersection(action.option_strings)):
            continue
        if action.option_strings:
            names = ", ".join(f"`{name}`" for name in action.option_strings)
            if action.nargs != 0:
                names += f" `{formatter._format_args(action, formatter._get_default_metavar_for_optional(action))}`"
        else:
            names = f"`{formatter._format_args(action, formatter._get_default_metavar_for_positional(action))}`"
        helped = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {_cell(names)} | {_cell(helped)} |")
    return rows


def _sentence(text: str) -> str:
    text = " ".join(text.split()).rstrip(".")
    return _cell(text[:1].upper() + text[1:] + ".") if text else ""


def _command_page(name: str, parser: argparse.ArgumentParser, summary: str, leave_out: frozenset[str]) -> list[str]:
    lines = [f"### `slmops {name}`", "", _sentence(summary), ""]
    description = " ".join((parser.description or "").split())
    if description and description.rstrip(".") != " ".join(summary.split()).rstrip("."):
        lines += [_sentence(_rst_to_md(description)), ""]
    lines += ["```text", parser.format_usage().strip(), "```", ""]
    rows = _option_rows(parser, leave_out=leave_out)
    if rows:
        lines += ["| argument or option | what it does |", "|---|---|", *rows, ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```", ""]
    return lines


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown for every command and option of ``parser`` (default: the ``slmops`` parser itself).

    Commands come in the groups ``slmops --help`` lists; a command the groups do not name (a
    parser built by a test, say) is listed after them, so nothing the parser has is left out.
    The global options are listed once, at the top, not under each command.
    """
    parser = parser or app.build_parser()
    commands = _subcommands(parser)
    summaries = {c.name: (c.group, c.summary) for module in app.GROUPS for c in module.COMMANDS}
    global_flags = frozenset(flag for action in parser._actions for flag in action.option_strings
                             if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)))
    lines = ["## `slmops`", "", "```text", parser.format_usage().strip(), "```", "",
             "Global options (before or after the command):", "",
             "| option | what it does |", "|---|---|", *_option_rows(parser), ""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip(), "```", ""]
    listed: set[str] = set()
    for group in Group:
        names = [n for n in commands if summaries.get(n, (None,))[0] is group]
        if not names:
            continue
        title, _, about = GROUP_TITLES[group].partition(" (")
        lines += [f"## {title.capitalize()}", "", _sentence(about.rstrip(")")), ""]
        for name in names:
            lines += _command_page(name, commands[name], summaries[name][1], global_flags)
            listed.add(name)
    others = [n for n in commands if n not in listed]
    if others:
        lines += ["## Other commands", ""]
        for name in others:
            lines += _command_page(name, commands[name], commands[name].description or name, global_flags)
    return "\n".join(lines).rstrip() + "\n"


# --- run parameters ----------------------------------------------------------------------------------------------


def _param_rows(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    defaults = cls().as_dict() if hasattr(cls, "as_dict") else dataclasses.asdict(cls())
    rows = []
    for spec in dataclasses.fields(cls):
        meta = spec.metadata
        allowed = (" \\| ".join(f"`{c}`" for c in meta.get("choices", ())) if meta.get("choices") else
                   f"{meta['low']} to {meta['high']}" if meta.get("low") is not None else "")
        if meta.get("pattern"):
            allowed = (allowed + "; " if allowed else "") + "a safe name (letters, digits, `.`, `_`, `-`)"
        default = defaults[spec.name]
        shown = "none" if default in ("", []) else f"`{default}`"
        rows.append(f"| `{spec.name}` | {_cell(_type_name(hints[spec.name]))} | {shown} | {allowed} | "
                    f"{_cell(meta.get('help', ''))} |")
    return rows


def params_reference() -> str:
    """Markdown for every run parameter (:class:`RunParams`) and the comparison notebook's (:class:`CompareParams`)."""
    header = ["| parameter | type | default | allowed | what it sets |", "|---|---|---|---|---|"]
    return "\n".join([
        "## Run parameters (`RunParams`)", "",
        _rst_to_md(inspect.getdoc(run_params.RunParams) or ""), "",
        *header, *_param_rows(run_params.RunParams), "",
        "## The comparison notebook's parameters (`CompareParams`)", "",
        _rst_to_md(inspect.getdoc(run_params.CompareParams) or ""), "",
        *header, *_param_rows(run_params.CompareParams), "",
    ])


# --- result files ------------------------------------------------------------------------------------------------


def attributes(doc: str) -> dict[str, str]:
    """The entries of a Google-style docstring's ``Attributes:`` section, by name.

    Example:
        >>> attributes("A thing.\\n\\nAttributes:\\n    size: Bytes,\\n        on disk.\\n    a, b: Both.\\n")
        {'size': 'Bytes, on disk.', 'a': 'Both.', 'b': 'Both.'}
    """
    found: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return found
    indent = len(lines[start]) - len(lines[start].lstrip())
    names: list[str] | None = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            break
        entry = re.match(r"\s*([A-Za-z_][\w.]*(?:, [A-Za-z_][\w.]*)*)(?: \([^)]*\))?: ?(.*)$", line)
        if entry and (names is None or depth <= indent + 4):
            names = entry.group(1).split(", ")  # "a, b: text" documents both
            for name in names:
                found[name] = entry.group(2)
        elif names:
            for name in names:
                found[name] += " " + line.strip()
    return found


def _record(cls: type) -> list[str]:
    doc = inspect.getdoc(cls) or ""
    summary = _rst_to_md(doc.split("\n\n")[0])
    lines = [f"#### `{cls.__name__}`", "", summary, ""]
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        return [*lines, "Values: " + ", ".join(f"`{member.value}`" for member in cls) + ".", ""]
    described = attributes(doc)
    hints = typing.get_type_hints(cls)
    lines += ["| field | type | meaning and unit |", "|---|---|---|"]
    for spec in dataclasses.fields(cls):
        about = described.get(spec.name) or next(
            (f"See `{other}`: {text}" for other, text in described.items() if f"``{spec.name}``" in text), "")
        lines.append(f"| `{spec.name}` | {_cell(_type_name(hints[spec.name]))} | {_cell(_rst_to_md(about))} |")
    return [*lines, ""]


def record_types(module: ModuleType, records: tuple[str, ...]) -> list[type]:
    """The records named in :data:`RESULT_FILES`: a plain name is ``module``'s, a dotted one its own module's."""
    found = []
    for name in records:
        owner, _, record = name.rpartition(".")
        found.append(getattr(importlib.import_module(owner) if owner else module, record))
    return found


def results_reference() -> str:
    """Markdown for every result file: the version written, its history, and each record's fields."""
    lines: list[str] = []
    for files, module_name, records in RESULT_FILES:
        module = importlib.import_module(module_name)
        lines += [f"## {' and '.join(f'`{name}`' for name in files)}",
                  "", f"Written at version {module.SCHEMA_VERSION} by `{module_name}`.", "",
                  _rst_to_md(inspect.getdoc(module) or "").strip(), ""]
        for record in record_types(module, records):
            lines += _record(record)
    return "\n".join(lines).rstrip() + "\n"


GENERATORS = {"cli": cli_reference, "params": params_reference, "results": results_reference}


def render(markdown: str) -> str:
    """``markdown`` with each ``<!-- generated: NAME -->`` line replaced by that reference."""
    return MARKER.sub(lambda m: GENERATORS[m.group("what")](), markdown)


def api_sources() -> Path:
    """Make :data:`API_SOURCES` (links under the ``slmops`` name to the source folders) and return it."""
    namespace = API_SOURCES / "slmops"
    namespace.mkdir(parents=True, exist_ok=True)
    for name in ("toolkit", "widgets"):
        link = namespace / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    return API_SOURCES


@event_priority(100)  # before mkdocstrings reads its search paths
def on_config(config: object, **_: object) -> object:
    """mkdocs' hook, before any page is read: the source links the API pages need.

    The folder of the running ``mkdocs`` script holds the ``slmops`` console script too, which griffe
    would take for a second part of the ``slmops`` namespace (and then miss its modules), so it leaves
    the search path.
    """
    api_sources()
    # The project's docstrings title their doctests "Example:" (Google style allows both); griffe knows only
    # "Examples:" and would read the doctest as Markdown, its output lists as links.
    google._section_kind.setdefault("example", griffe.DocstringSectionKind.examples)
    sys.path[:] = [entry for entry in sys.path if not (Path(entry or ".") / "slmops").is_file()]
    return config


def on_page_markdown(markdown: str, **_: object) -> str:
    """mkdocs' hook: fill in the generated references of a page that asks for them."""
    return render(markdown) if MARKER.search(markdown) else markdown


if __name__ == "__main__":
    print(GENERATORS[sys.argv[1] if len(sys.argv) > 1 else "cli"]())
