"""What every ``slmops`` command shares: option types, the global flags, output (text or ``--json``) and logging."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, is_dataclass
from enum import StrEnum
from pathlib import Path

from slmops.toolkit.core.errors import ParamsError
from slmops.toolkit.domain import run_params


class Group(StrEnum):
    """The groups ``slmops --help`` lists the commands in."""

    PIPELINE = "pipeline"
    MODELS = "models"
    RUNS = "runs"


GROUP_TITLES = {Group.PIPELINE: "pipeline (convert, register, test, benchmark; the notebooks end to end)",
                Group.MODELS: "models (what Foundry Local has, and using it)",
                Group.RUNS: "runs (reports: read, compare, rerun, pack)"}

#: Where ``slmops test`` and ``slmops bench`` write when no ``--out`` is given: one run folder they share
#: (bench reads the checklist's test.json beside it), never the current folder.
DEFAULT_RESULTS_DIR = Path("outputs") / "run"

CACHE_EPILOG = ("Foundry Local's cache: --cache-dir, else $SLMOPS_CACHE_DIR, else ~/.slmops/foundry; the foundry "
                "CLI's own cache is accepted as `foundry cache location` prints it (~/.foundry/cache/models).")


@dataclass(frozen=True)
class Command:
    """One subcommand as ``slmops --help`` lists it."""

    group: Group
    name: str
    summary: str


class UsageError(Exception):
    """An argparse error, raised instead of argparse's exit so ``--json`` can report it as JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with every option's default shown (once: not when its help already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS, "", [])
                or action.option_strings == [] or isinstance(action, argparse._HelpAction)):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are raised (:class:`UsageError`), with :class:`Formatter` help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's hook, called with the message of a usage error
        raise UsageError(self, message)


def global_options() -> argparse.ArgumentParser:
    """The flags every command takes, before or after the subcommand's name.

    Defaults are suppressed, so a flag given after the subcommand does not reset one given
    before it; read them with :func:`flag`.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error (and debug messages)")
    group.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                       help="print results and errors only (no progress lines)")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="print debug messages too")
    return parent


def flag(args: argparse.Namespace, name: str) -> int:
    """A global flag's value (0 or False when not given)."""
    return getattr(args, name, 0) or 0


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``), refused with the range otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high if high else 'up'}")
        return value

    return parse


def fraction(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low}..{high}")
        return value

    return parse


def run_param(name: str) -> dict:
    """``add_argument`` keywords for an option that sets run parameter ``name``: type, range, default and help
    all from :class:`~slmops.toolkit.domain.run_params.RunParams`, the one place they are declared."""
    convert = run_params.item_parser(name)

    def parse(text: str) -> object:
        try:
            return convert(text)
        except ParamsError as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None

    parse.__name__ = convert.__name__
    default = run_params.DEFAULTS.as_dict()[name]
    kwargs = {"type": parse, "default": default, "help": run_params.describe(name)}
    if isinstance(default, list):
        kwargs["nargs"] = "+"
    return kwargs


def default_of(cls: type, name: str) -> object:
    """The default of dataclass field ``name``: the one place a CLI default comes from."""
    return next(f.default for f in fields(cls) if f.name == name)


def cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir`` and the epilog that explains it (only on commands that use the cache)."""
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="Foundry Local model cache (default: $SLMOPS_CACHE_DIR or ~/.slmops/foundry; "
                        "`foundry cache location`'s folder works too)")
    parser.epilog = f"{parser.epilog}\n\n{CACHE_EPILOG}" if parser.epilog else CACHE_EPILOG


def json_option(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print the command's result (and any error) as one JSON document on stdout."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (errors too)")


def out_option(parser: argparse.ArgumentParser, what: str, *, default: object = None, required: bool = False) -> None:
    """``-o/--out``: always a folder the command writes into; ``what`` says what goes there."""
    parser.add_argument("-o", "--out", metavar="DIR", default=default, required=required, help=what)


def _plain(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)  # paths, enums


def jsonable(value: object) -> object:
    """``value`` as plain JSON types (dataclasses, paths and enums included, at any depth).

    Example:
        >>> jsonable({"path": Path("/tmp"), "n": 1})
        {'path': '/tmp', 'n': 1}
    """
    return json.loads(json.dumps(value, default=_plain))


def print_json(value: object) -> None:
    """Print ``value`` as indented JSON on stdout."""
    print(json.dumps(jsonable(value), indent=2))


# --- logging: the library logs, the CLI decides what shows ---------------------------------------


class _ConsoleHandler(logging.Handler):
    """Progress (INFO and below) to stdout, warnings and errors to stderr; everything to stderr under ``--json``.

    The streams are looked up at each message, so redirected or captured streams are honoured.
    """

    def __init__(self, *, json_mode: bool) -> None:
        super().__init__()
        self.json_mode = json_mode
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if self.json_mode or record.levelno >= logging.WARNING else sys.stdout
        try:
            prefix = "warning: " if record.levelno == logging.WARNING else ""
            stream.write(prefix + self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 (logging's own contract: never raise from emit)
            self.handleError(record)


def configure_logging(args: argparse.Namespace) -> None:
    """Show the toolkit's log messages on the console at the level ``-q``/``-v``/``--debug`` ask for."""
    quiet, verbose = flag(args, "quiet"), flag(args, "verbose") or flag(args, "debug")
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logger = logging.getLogger("slmops")  # every module's logger (slmops.toolkit..., slmops.widgets...)
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler(json_mode=bool(getattr(args, "json", False))))
    logger.setLevel(level)
    logger.propagate = False
