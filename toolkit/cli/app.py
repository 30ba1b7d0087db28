"""The ``slmops`` parser and entry point: global flags, grouped help, errors in one line (or JSON)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import textwrap

# The command groups by their own module names: `from slmops.toolkit.cli import ...` would import the package, whose
# __init__ imports this module (an import circle).
import slmops.toolkit.cli.models as models  # noqa: PLR0402
import slmops.toolkit.cli.pipeline as pipeline  # noqa: PLR0402
import slmops.toolkit.cli.runs as runs  # noqa: PLR0402
from slmops.toolkit.cli.common import GROUP_TITLES, Group, Parser, UsageError, configure_logging, flag, global_options
from slmops.toolkit.core import artifacts, settings
from slmops.toolkit.core.errors import SlmopsError

#: Each command group's module, in the order ``slmops --help`` lists them.
GROUPS = (pipeline, models, runs)


def version() -> str:
    """The installed toolkit's version (the source tree's when it is not installed)."""
    try:
        return importlib.metadata.version("slmops-toolkit")
    except importlib.metadata.PackageNotFoundError:
        from slmops.toolkit import __version__

        return __version__


def _command_list() -> str:
    lines = []
    for group in Group:
        lines.append(f"{GROUP_TITLES[group]}:")
        lines += [f"  {c.name:<10} {c.summary}" for module in GROUPS for c in module.COMMANDS if c.group is group]
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    common = global_options()
    parser = Parser(
        prog="slmops", parents=[common], usage="slmops [-h] [--version] [--debug] [-q] [-v] COMMAND ...",
        description=textwrap.fill("Fine-tuned small language model -> quantized ONNX -> Foundry Local, tested and "
                                  "benchmarked. Nothing uses the network (a model's package comes from the package "
                                  "index on first use).", 88) + "\n\n" + _command_list(),
        epilog="Global options work before or after the command (slmops ls --json --debug).\n"
        "slmops COMMAND --help: a command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"slmops {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser, prog="slmops",
                                help=argparse.SUPPRESS)  # listed by group in the description
    for module in GROUPS:
        module.add_commands(sub, [common])
    return parser


def _fail(args: argparse.Namespace | None, message: str, code: int, kind: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": message, "kind": kind, "exit_code": code}))
    else:
        print(f"slmops: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slmops`` console script."""
    settings.apply_offline_env()
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        if not as_json:
            exc.parser.print_usage(sys.stderr)
        return _fail(None, f"error: {exc.message}" if not as_json else exc.message, 2, "usage", as_json)
    except SystemExit as exc:  # --help or --version (0)
        return int(exc.code or 0)
    configure_logging(args)
    debug = flag(args, "debug")
    try:
        if getattr(args, "out", None):  # every --out is a folder: one that cannot be made is refused before any work
            artifacts.check_out_folder(args.out)
        return args.func(args)
    except SlmopsError as exc:
        if debug:
            raise
        # 2: input that cannot be used; 1: a step that failed
        return _fail(args, f"error: {exc}" if not as_json else str(exc), exc.exit_code, type(exc).__name__, as_json)
    except KeyboardInterrupt:
        return _fail(args, "interrupted; nothing half-written was left in place.", 130, "interrupted", as_json)
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if debug:
            raise
        return _fail(args, f"unexpected error: {type(exc).__name__}: {exc}. Run again with --debug for the "
                     "traceback, and please report it.", 1, type(exc).__name__, as_json)
