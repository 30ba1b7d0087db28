"""The documentation: a README that fits on a page, reference pages generated from the code, examples that run.

``make test`` also builds the site with ``mkdocs build --strict`` (a broken link or any warning
fails); these tests check what a build cannot: that the generated references follow the code,
that the README stays short and free of measurements and history, and that every shell and
Python example in the README and the tutorial is run here or marked ``<!-- not run: reason -->``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from dataclasses import fields
from pathlib import Path

from slmops.toolkit.cli import app
from slmops.toolkit.domain import run_params

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The pages whose every example must run or be marked: the README and the tutorial.
EXAMPLE_PAGES = (README, *sorted((DOCS / "tutorial").glob("*.md")))
#: Code and prose the history-words rule covers.
WORDED = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md", "docs", "toolkit", "widgets", "scripts", "benchmarks",
          "notebooks", "tests")
#: Phrases that date a text ("as of this session"); assembled so this file does not contain them itself.
HISTORY = re.compile("|".join(["this" + " round", "last" + " round", "before these" + " changes"]), re.IGNORECASE)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>[^>]*\S[^>]*) -->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"bash": "shell", "sh": "shell", "console": "shell", "python": "python", "py": "python"}


def _docs_reference():
    """``scripts/docs_reference.py`` (the mkdocs hook), loaded as a module."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _docs_reference()


def _examples(page: Path) -> list[tuple[str, str, str | None, int]]:
    """Each fenced block of ``page``: (kind, body, the not-run reason or None, line number)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        before = text[:block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = NOT_RUN.fullmatch(before.strip())
        kind = RUNNABLE.get(block.group("lang"), "")
        found.append((kind, block.group("body"), mark.group("reason") if mark else None,
                      text.count("\n", 0, block.start()) + 1))
    return found


# --- the README --------------------------------------------------------------------------------------------------


def test_the_readme_fits_on_a_page_and_keeps_its_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; the site holds the rest (docs/)"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text


def test_the_readme_holds_no_measurements():
    text = README.read_text(encoding="utf-8")
    figure = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|s|tok/s|tokens/s|MB|GB|MiB|GiB|x)\b|\b\d+m\d+s\b|\d+(?:\.\d+)?%")
    assert figure.findall(text) == [], "measured figures go to docs/benchmarks.md, dated, with the machine"


def test_no_history_words_in_the_readme_the_docs_or_the_code():
    hits = []
    for name in WORDED:
        path = ROOT / name
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and file.suffix in (".md", ".py", ".ipynb", ".j2", ".yml", ".yaml", ".toml"):
                text = file.read_text(encoding="utf-8", errors="replace")
                hits += [f"{file.relative_to(ROOT)}: {m.group(0)!r}" for m in HISTORY.finditer(text)]
    assert hits == [], "history goes to CHANGELOG.md, dated by its version: " + "; ".join(hits)


def test_every_readme_link_into_the_repository_exists():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets, "the README links into the site"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []


def test_converting_a_lora_fine_tune_is_one_click_from_the_readme():
    text = README.read_text(encoding="utf-8")
    assert "](docs/how-to/bring-a-lora-adapter.md)" in text
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert "how-to/bring-a-lora-adapter.md" in nav
    page = (DOCS / "how-to" / "bring-a-lora-adapter.md").read_text(encoding="utf-8")
    assert "slmops convert my-adapter/ --base" in page


# --- examples: run, or marked as not run -------------------------------------------------------------------------


def test_every_example_is_runnable_or_marked_with_a_reason():
    unmarked_other = []
    for page in EXAMPLE_PAGES:
        for kind, body, reason, line in _examples(page):
            if reason is None and not kind and body.strip() and not _is_text(page, line):
                unmarked_other.append(f"{page.relative_to(ROOT)}:{line}")
    assert unmarked_other == [], "a block is shell (bash), python, or text, or it is marked <!-- not run: ... -->"
    runnable = [b for page in EXAMPLE_PAGES for b in _examples(page) if b[0] and b[2] is None]
    assert runnable, "the README and the tutorial keep some examples that the tests run"


def _is_text(page: Path, line: int) -> bool:
    return page.read_text(encoding="utf-8").splitlines()[line - 1].strip() == "```text"


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_the_cli_reference_has_every_command_and_option_of_the_parser():
    parser = app.build_parser()
    page = reference.cli_reference()
    for name, sub in _commands(parser).items():
        assert f"### `slmops {name}`" in page
        section = page.split(f"### `slmops {name}`", 1)[1].split("\n### ", 1)[0]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                if flag in ("--debug", "-q", "--quiet", "-v", "--verbose"):
                    assert f"`{flag}`" in page.split("## Pipeline", 1)[0]  # the global options, once
                else:
                    assert f"`{flag}`" in section, f"slmops {name} {flag} is missing from the CLI reference"


def test_an_option_added_to_the_parser_appears_in_the_cli_reference():
    parser = app.build_parser()
    before = reference.cli_reference(parser)
    _commands(parser)["convert"].add_argument("--fake-docs-option", metavar="N", default=7,
                                              help="an option only this test adds")
    after = reference.cli_reference(parser)
    assert "--fake-docs-option" not in before
    convert = after.split("### `slmops convert`", 1)[1].split("\n### ", 1)[0]
    assert "| `--fake-docs-option` `N` | an option only this test adds (default: 7) |" in convert


def test_a_command_outside_the_groups_still_appears():
    parser = app.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("fakecmd", description="a command only this test adds")
    extra.add_argument("--only-here", action="store_true", help="its one flag")
    page = reference.cli_reference(parser)
    assert "### `slmops fakecmd`" in page and "`--only-here`" in page


def test_the_hook_fills_the_reference_pages_and_leaves_no_marker():
    for name, expected in (("cli", "### `slmops convert`"), ("params", "`int4_recipe`"),
                           ("results", "## `test.json`")):
        source = (DOCS / "reference" / f"{name}.md").read_text(encoding="utf-8")
        assert f"<!-- generated: {name} -->" in source
        filled = reference.on_page_markdown(source, page=None, config=None, files=None)
        assert expected in filled and "<!-- generated:" not in filled


def test_the_parameter_reference_has_every_run_parameter_with_its_default():
    page = reference.params_reference()
    defaults = run_params.DEFAULTS.as_dict()
    for spec in fields(run_params.RunParams):
        row = next((line for line in page.splitlines() if line.startswith(f"| `{spec.name}` |")), None)
        assert row is not None, f"{spec.name} is missing from the parameter reference"
        shown = "none" if defaults[spec.name] in ("", []) else f"`{defaults[spec.name]}`"
        assert f"| {shown} |" in row


def test_the_result_files_reference_has_every_field_and_the_version_written():
    page = reference.results_reference()
    for files, module_name, records in reference.RESULT_FILES:
        module = importlib.import_module(module_name)
        heading = "## " + " and ".join(f"`{name}`" for name in files)
        assert heading in page
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        assert f"Written at version {module.SCHEMA_VERSION} by" in section
        for record in reference.record_types(module, records):
            if hasattr(record, "__dataclass_fields__"):
                for spec in fields(record):
                    row = next(line for line in section.splitlines() if line.startswith(f"| `{spec.name}` |"))
                    assert not row.endswith("|  |"), f"{record.__name__}.{spec.name} has no description"
            else:
                assert all(f"`{member.value}`" in section for member in record)


def test_attributes_reads_a_google_docstring_section():
    doc = "A row.\n\nAttributes:\n    size: Bytes\n        on disk.\n    a, b: Both.\n\nExample:\n    x: not a field\n"
    assert reference.attributes(doc) == {"size": "Bytes on disk.", "a": "Both.", "b": "Both."}
