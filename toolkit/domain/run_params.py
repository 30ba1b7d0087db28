"""A run's parameters: one model for the notebooks, the demo, ``slmops run`` and the CLI's defaults.

:class:`RunParams` holds every parameter with its type, default, help and allowed values.
From it come a run's ``params.json`` (the run file every notebook reads: ``slmops lab`` and
``slmops run`` write it with every parameter), notebook 05's ``parameters`` cell
(:func:`parameters_cell` of :class:`CompareParams`), the demo's values (the defaults), the checks on a params file
or a sweep (:func:`parse`, :func:`parse_sweep`), and the defaults of ``slmops bench`` and
``slmops test`` (:data:`DEFAULTS`).
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from slmops.toolkit.core.errors import ParamsError
from slmops.toolkit.domain.options import (
    BLOCK_SIZES,
    DEFAULT_INT4_RECIPE,
    INT4_RECIPES,
    REPETITION_PENALTY,
    Method,
    Precision,
)
from slmops.toolkit.domain.templates import Template

#: Templates a params file can name (``custom`` needs four strings, given through the API or a widget).
_PRESET_NAMES = tuple(t.value for t in Template if t is not Template.CUSTOM)

#: A safe prefix of registered names: letters, digits, '.', '_', '-', at most 48 (a suffix follows).
_PREFIX = r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,47}"

#: How many runs a sweep may have unless the caller raises the cap.
MAX_SWEEP_RUNS = 64


def _param(default: object, about: str, *, choices: tuple = (), low: float | None = None, high: float | None = None,
           path: bool = False, pattern: str = ""):
    """A parameter's field: its default, one line of help, allowed values (each list item for lists), range."""
    meta = {"help": about, "choices": tuple(choices), "low": low, "high": high, "path": path, "pattern": pattern}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunParams:
    """Every parameter of a pipeline run (notebooks 01 to 04); the defaults are the demo's."""

    run_dir: str = _param("", "folder for this run's results; empty means the folder of the run file (slmops lab's "
                          "DIR; slmops run sets it to --out)")
    model_dir: str = _param("", "Hugging Face model folder; empty means the bundled SmolLM2-135M-Instruct", path=True)
    adapter: str = _param("", "PEFT LoRA adapter folder merged into the model before conversion (its base: model_dir, "
                          "else the folder its config names); empty means none", path=True)
    finetune: bool = _param(True, "with the bundled model and no adapter: fine-tune a LoRA adapter on the bundled "
                            "Veloria dataset (once, then reused) and deploy the fine-tune, with the base as a "
                            "negative control")
    name_prefix: str = _param("smollm2", "registered names are PREFIX-PRECISION", pattern=_PREFIX)
    precisions: list[str] = _param(["fp32", "int8", "int4"], "precisions to build, register, test and benchmark",
                                   choices=tuple(p.value for p in Precision))
    method: str = _param("builder", "conversion route: builder | olive | olive-config",
                         choices=tuple(m.value for m in Method))
    int4_recipe: str = _param(DEFAULT_INT4_RECIPE, "INT4 recipe: " + " | ".join(INT4_RECIPES),
                              choices=tuple(INT4_RECIPES))
    int4_block_size: int = _param(0, "INT4 block size " + " | ".join(map(str, BLOCK_SIZES)) + "; 0 keeps the recipe's",
                                  choices=(0, *BLOCK_SIZES))
    compare_recipes: bool = _param(True, "build every INT4 recipe and measure it against FP32 "
                                   "(needs fp32 in precisions)")
    template: str = _param("auto", "prompt template: " + " | ".join(_PRESET_NAMES), choices=_PRESET_NAMES)
    repetition_penalty: float = _param(REPETITION_PENALTY, "the registrations' repetition penalty (1 means none; the "
                                       "tutorial's 1.1 costs a terse fine-tune such as Gemma 3's its trained answers)",
                                       low=1, high=2)
    cases: str = _param("", "JSONL test cases; empty means the fine-tune's dataset cases for the bundled fine-tune, "
                        "else the bundled cases", path=True)
    checklist_requests: int = _param(120, "requests of the checklist's memory check, in 5 windows (0 skips it)",
                                     low=0, high=100_000)
    prompt_lengths: list[int] = _param([16, 128, 512], "benchmark prompt lengths in tokens", low=1, high=1 << 20)
    gen_lengths: list[int] = _param([32], "tokens generated per benchmark run (several: a generation-length sweep)",
                                    low=2, high=1 << 16)
    threads: list[int] = _param([], "direct-engine thread counts to sweep; empty means the model's own (as Foundry "
                                "runs it)", low=1, high=1024)
    repeats: int = _param(3, "measured benchmark runs per prompt length", low=1, high=1000)
    warmup: int = _param(1, "discarded warm-up runs", low=0, high=100)
    seed: int = _param(0, "seed of every checklist request (decoding is greedy; recorded for reruns)", low=0,
                       high=2**31 - 1)
    cache_dir: str = _param("", "Foundry Local cache; empty means $SLMOPS_CACHE_DIR or ~/.slmops/foundry", path=True)
    interactive: bool = _param(True, "show the pickers and wait for each stage's button; false (slmops run sets it) "
                               "runs every stage straight through on these parameters")

    def as_dict(self) -> dict:
        """The parameters as plain JSON-able values, in declaration order."""
        return asdict(self)


@dataclass(frozen=True)
class CompareParams:
    """The parameters of notebook 05 (two runs compared), as ``slmops compare`` takes them."""

    run_a: str = _param("", "the baseline run folder (one slmops demo, run or lab wrote); empty: set it first")
    run_b: str = _param("", "the run to judge against it; empty means this run (the folder of the run file)")
    out_dir: str = _param("", "folder for compare.html and compare.json; empty means RUN_B/compare")


#: The defaults: the demo's values, and the CLI's where a command shares a parameter.
DEFAULTS = RunParams()

#: Parameter names that hold a user's path (pinned to absolute before notebooks run in the run folder).
PATH_PARAMS = tuple(f.name for f in fields(RunParams) if f.metadata["path"])


def with_absolute_paths(params: dict) -> dict:
    """``params`` with every user path (:data:`PATH_PARAMS`) made absolute against this process's cwd.

    Notebooks run in the run folder and sweep points on other machines: a relative path
    must be pinned where the user wrote it.

    Example:
        >>> with_absolute_paths({"model_dir": "m", "repeats": 2})["model_dir"].startswith("/")
        True
    """
    return {key: str(Path(value).expanduser().resolve()) if key in PATH_PARAMS and value else value
            for key, value in params.items()}


def _types(cls: type = RunParams) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _type_name(kind: object) -> str:
    return {str: "text", int: "a whole number", float: "a number", bool: "true or false"}.get(kind, "a list")


def _check_scalar(name: str, value: object, kind: type, meta: dict, where: str) -> None:
    # bool is an int in Python; a parameter of one type never takes the other (a number takes a whole one).
    if type(value) is not kind and not (kind is float and type(value) is int):
        example = {str: '"text"', int: "3", float: "1.0", bool: "true"}[kind]
        raise ParamsError(f"{where}{name} must be {_type_name(kind)} (e.g. {name}: {example}), not "
                          f"{json.dumps(value)}.")
    if meta["choices"] and value not in meta["choices"]:
        raise ParamsError(f"{where}{name} is {json.dumps(value)}; choose one of "
                          f"{', '.join(map(str, meta['choices']))}.")
    if meta["pattern"] and not re.fullmatch(meta["pattern"], value):
        raise ParamsError(f"{where}{name} is {json.dumps(value)}: use up to 48 letters, digits, '.', '_' and '-', "
                          "starting with a letter or digit (no '..', spaces or path separators).")
    low, high = meta["low"], meta["high"]
    if kind in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
        raise ParamsError(f"{where}{name} is {value}; it must be from {low} to {high}.")


def check_value(name: str, value: object, *, where: str = "") -> None:
    """Raise :class:`ParamsError` unless ``value`` has the type and range of parameter ``name``.

    Example:
        >>> check_value("precisions", "int4")
        Traceback (most recent call last):
        ...
        slmops.toolkit.core.errors.ParamsError: precisions must be a list (e.g. precisions: [fp32, int8, int4]), not "int4".
    """
    spec = {f.name: f for f in fields(RunParams)}
    if name not in spec:
        raise ParamsError(f"{where}unknown parameter {name!r}. Known: {', '.join(spec)}.")
    kind, meta = _types()[name], spec[name].metadata
    if typing.get_origin(kind) is list:
        if not isinstance(value, list):
            example = json.dumps(DEFAULTS.as_dict()[name] or [1]).replace('"', "")
            raise ParamsError(f"{where}{name} must be a list (e.g. {name}: {example}), not {json.dumps(value)}.")
        (item,) = typing.get_args(kind)
        for entry in value:
            _check_scalar(name, entry, item, meta, where)
        return
    _check_scalar(name, value, kind, meta, where)


def parse(mapping: object, *, source: str = "parameters") -> RunParams:
    """Check a mapping of parameters (names, types, ranges) and fill in the defaults.

    Raises:
        ParamsError: not a mapping, an unknown name, or a value of the wrong type or range;
            the message names the parameter and an example of a right value.

    Example:
        >>> parse({"precisions": ["int4"], "repeats": 5}).repeats
        5
    """
    if not isinstance(mapping, dict):
        raise ParamsError(f"{source} must be a mapping of parameter names to values, e.g. precisions: [int4].")
    for name, value in mapping.items():
        check_value(str(name), value, where=f"{source}: ")
    return RunParams(**mapping)


def parse_sweep(sweep: object, *, source: str = "parameters", max_runs: int = MAX_SWEEP_RUNS) -> dict[str, list]:
    """Check a ``sweep`` mapping: each name a parameter, each value a non-empty list of that parameter's values.

    Raises:
        ParamsError: a wrong name or value, or more than ``max_runs`` combinations.
    """
    if not isinstance(sweep, dict) or not sweep or not all(isinstance(v, list) and v for v in sweep.values()):
        raise ParamsError(f"`sweep` in {source} must map parameter names to non-empty lists of values, "
                          "e.g. sweep: {int4_block_size: [32, 128]}.")
    runs = 1
    for name, values in sweep.items():
        for value in values:
            check_value(str(name), value, where=f"{source}: sweep: ")
        runs *= len(values)
    if runs > max_runs:
        raise ParamsError(f"The sweep in {source} has {runs} combinations, more than the cap of {max_runs}; "
                          "sweep fewer values, or raise the cap (slmops run --max-runs N).")
    return sweep


def parameters_cell(cls: type = RunParams) -> str:
    """A notebook's ``parameters`` cell: ``name: type = default  # help``, one line per parameter of ``cls``.

    Example:
        >>> parameters_cell().splitlines()[4]
        'name_prefix: str = "smollm2"  # registered names are PREFIX-PRECISION'
    """
    lines = []
    for spec in fields(cls):
        kind = _types(cls)[spec.name]
        type_name = "list" if typing.get_origin(kind) is list else kind.__name__
        default = spec.default if spec.default is not MISSING else spec.default_factory()
        value = repr(default) if isinstance(default, bool) else json.dumps(default)
        lines.append(f"{spec.name}: {type_name} = {value}  # {spec.metadata['help']}")
    return "\n".join(lines)


def parse_assignment(text: str) -> tuple[str, object]:
    """Read one ``KEY=VALUE`` (``slmops run --set``): the value in YAML, checked as a params file's would be.

    A text parameter takes the value as written; a list parameter takes ``[a, b]`` or one item.

    Raises:
        ParamsError: no ``=``, an unknown name, or a value of the wrong type or range.

    Example:
        >>> parse_assignment("precisions=[fp32, int4]")
        ('precisions', ['fp32', 'int4'])
        >>> parse_assignment("repeats=5")
        ('repeats', 5)
    """
    name, sep, raw = (part.strip() for part in text.partition("="))
    if not sep or not name:
        raise ParamsError(f"--set {text!r}: write KEY=VALUE, e.g. --set precisions=[int4] or --set repeats=5.")
    kinds = _types()
    if name not in kinds:
        raise ParamsError(f"--set: unknown parameter {name!r}. Known: {', '.join(kinds)}.")
    kind = kinds[name]
    if kind is str:
        value: object = raw
    else:
        import yaml

        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            raise ParamsError(f"--set {name}={raw}: not a value; write e.g. {name}=3, {name}=true or "
                              f"{name}=[a, b].") from None
        if typing.get_origin(kind) is list and not isinstance(value, list):
            value = [] if value is None else [value]
    check_value(name, value, where="--set ")
    return name, value


def item_parser(name: str):
    """A converter from text to one value (one item, for a list) of parameter ``name``, checked for type and range.

    The CLI's options that set a run parameter take their type, range and choices from here,
    so they cannot drift from :class:`RunParams`.

    Example:
        >>> item_parser("repeats")("4")
        4
    """
    kind = _types()[name]
    item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind

    def convert(text: str) -> object:
        try:
            value = item(text) if item is not bool else {"true": True, "false": False}[text.lower()]
        except (ValueError, KeyError):
            raise ParamsError(f"{text!r} is not {_type_name(item)}") from None
        meta = {f.name: f for f in fields(RunParams)}[name].metadata
        low, high = meta["low"], meta["high"]
        if item in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
            raise ParamsError(f"{value} is out of range: use {low}..{high}")  # the CLI's wording for a range
        _check_scalar(name, value, item, meta, "")
        return value

    convert.__name__ = _type_name(item).removeprefix("a ")  # argparse names the type in its errors
    return convert


def describe(name: str) -> str:
    """One line of help for parameter ``name``: its help, allowed range or values, and default.

    Example:
        >>> describe("repeats")
        'measured benchmark runs per prompt length (1..1000; default 3)'
    """
    spec = {f.name: f for f in fields(RunParams)}[name]
    meta, default = spec.metadata, DEFAULTS.as_dict()[name]
    allowed = (" | ".join(map(str, meta["choices"])) if meta["choices"] else
               f"{meta['low']}..{meta['high']}" if meta["low"] is not None else "")
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{meta['help']} ({allowed + '; ' if allowed else ''}default {shown if shown != '' else 'none'})"
