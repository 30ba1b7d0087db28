"""The cases file (JSONL) and the rules a case's answer is judged by.

A case: ``id``, ``messages``, ``expect`` (rules by name), optionally ``group`` (``heldout``) and
``response_format``; or a ``"type": "tool_call"`` case (:mod:`~slmops.toolkit.stages.checklist.tool_calls`). Each rule is a :class:`Rule` in :data:`RULES`: how its expectation is
checked when the file is read, and how an answer is judged by it. A new rule is one more
entry (:func:`register_rule`); the checks that ask the cases are in
:mod:`slmops.toolkit.stages.checklist.answers`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.domain.datasets import HELDOUT, RETENTION
from slmops.toolkit.domain.prompts import BUNDLED_CASES
from slmops.toolkit.runtimes.foundry_requests import check_response_format
from slmops.toolkit.stages.checklist.tool_calls import is_tool_case, parse_tool_case


class RuleKind(StrEnum):
    """What a rule judges: the answer's content (the domain checks) or its structure (the format checks)."""

    CONTENT = "content"
    FORMAT = "format"


@dataclass(frozen=True)
class Rule:
    """One expectation a case may state.

    Attributes:
        name: Its key in a case's ``expect``.
        kind: Content or format: which check reports it.
        validate: Raises ValueError unless the expectation's value is usable (run when the file is read).
        judge: ``(expected value, answer) -> (met, the rule in words)``.
    """

    name: str
    kind: RuleKind
    validate: Callable[[object], None]
    judge: Callable[[object, str], tuple[bool, str]]


#: Every rule by name, in the order they were registered.
RULES: dict[str, Rule] = {}


def register_rule(rule: Rule) -> Rule:
    """Add a rule to :data:`RULES` (a case may then name it in ``expect``)."""
    RULES[rule.name] = rule
    return rule


def _words(name: str) -> Callable[[object], None]:
    def validate(value: object) -> None:
        if not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value):
            raise ValueError(f"{name!r} must be a non-empty list of non-empty strings")
    return validate


def _exact(value: object) -> None:
    if not isinstance(value, str):
        raise ValueError("'exact' must be a string")


def _regex(value: object) -> None:
    if not isinstance(value, str):
        raise ValueError("'regex' must be a string")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"'regex' does not compile ({exc})") from exc


def _max_chars(value: object) -> None:
    if type(value) is not int or value < 0:
        raise ValueError("'max_chars' must be a whole number >= 0")


def _schema(value: object) -> None:
    import jsonschema

    if not isinstance(value, dict):
        raise ValueError("'json_schema' must be a JSON Schema object")
    try:
        jsonschema.Draft202012Validator.check_schema(value)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"'json_schema' is not a valid schema ({exc.message})") from exc


def json_of(answer: str):
    """The JSON value an answer holds: the whole text, a fenced ```json block, or its first {...}.

    Raises:
        ValueError: none of them parses.

    Example:
        >>> json_of('Here: ```json\\n{"a": 1}\\n```')
        {'a': 1}
    """
    fenced = re.search(r"```(?:json)?\s*(.*?)```", answer, re.DOTALL)
    candidates = [answer.strip(), fenced.group(1).strip() if fenced else "", answer[answer.find("{"):answer.rfind("}") + 1]]
    for text in candidates:
        try:
            return json.loads(text)
        except (json.JSONDecodeError, ValueError):
            continue
    raise ValueError("no JSON found")


def _judge_schema(value, answer: str) -> tuple[bool, str]:
    import jsonschema

    try:
        jsonschema.validate(json_of(answer), value)
        return True, "valid JSON matching the schema"
    except (ValueError, jsonschema.ValidationError) as exc:
        return False, f"valid JSON matching the schema ({str(exc).splitlines()[0][:80]})"


for _rule in (
    Rule("contains", RuleKind.CONTENT, _words("contains"),
         lambda v, a: (all(w.lower() in a.lower() for w in v), f"contains all of [{', '.join(v)}]")),
    Rule("contains_any", RuleKind.CONTENT, _words("contains_any"),
         lambda v, a: (any(w.lower() in a.lower() for w in v), f"contains any of [{', '.join(v)}]")),
    Rule("not_contains", RuleKind.CONTENT, _words("not_contains"),
         lambda v, a: (not any(w.lower() in a.lower() for w in v), f"contains none of [{', '.join(v)}]")),
    Rule("exact", RuleKind.CONTENT, _exact, lambda v, a: (a.strip() == v.strip(), f"is exactly {v!r}")),
    Rule("json_schema", RuleKind.FORMAT, _schema, _judge_schema),
    Rule("regex", RuleKind.FORMAT, _regex, lambda v, a: (re.search(v, a) is not None, f"matches /{v}/")),
    Rule("max_chars", RuleKind.FORMAT, _max_chars, lambda v, a: (len(a) <= int(v), f"at most {v} characters")),
):
    register_rule(_rule)


def rules_of(kind: RuleKind) -> tuple[str, ...]:
    """The names of the rules of one kind.

    Example:
        >>> rules_of(RuleKind.FORMAT)
        ('json_schema', 'regex', 'max_chars')
    """
    return tuple(name for name, rule in RULES.items() if rule.kind is kind)


#: Rules about the answer's content (judged by the domain and held-out checks).
CONTENT_RULES = rules_of(RuleKind.CONTENT)
#: Rules about the answer's structure (judged by the format checks).
FORMAT_RULES = rules_of(RuleKind.FORMAT)


def judge(answer: str, expect: dict, rules: tuple[str, ...] | None = None) -> tuple[bool, str, float]:
    """Apply a case's expectations (those named in ``rules``; all by default) to an answer.

    Returns:
        ``(passed, the rules in words, score)``; the score is the share of rules met (0-1).

    Example:
        >>> judge("Paris.", {"contains_any": ["Paris"]})
        (True, 'contains any of [Paris]', 1.0)
    """
    wanted = tuple(RULES) if rules is None else rules
    unknown = [name for name in expect if name in wanted and name not in RULES]
    if unknown:
        raise SlmopsError(f"Unknown expectation {unknown[0]!r}; use {list(RULES)}.")
    outcomes = [RULES[name].judge(value, answer) for name, value in expect.items() if name in wanted]
    if not outcomes:
        return True, "answers", 1.0
    met = sum(ok for ok, _ in outcomes)
    return met == len(outcomes), "; ".join(text for _, text in outcomes), met / len(outcomes)


def _check_prompt(messages: list) -> None:
    """The model is asked something: some message has text (the runtime refuses a prompt without any)."""
    if not any(isinstance(m, dict) and isinstance(m.get("content"), str) and m["content"].strip() for m in messages):
        raise ValueError("the prompt is empty: every message's 'content' is empty or whitespace")


def _case_id(line: str) -> str:
    """The ``id`` a line gives its case, if any (for naming a case the line fails to describe)."""
    try:
        case = json.loads(line)
    except ValueError:
        return ""
    return case["id"] if isinstance(case, dict) and isinstance(case.get("id"), str) else ""


def parse_case(line: str) -> dict:
    """One case from one JSONL line.

    Raises:
        ValueError: (or its JSON subclass) the line is not a valid case; the message says what is wrong.
    """
    case = json.loads(line)
    if not isinstance(case, dict):
        raise ValueError("a case is a JSON object")
    if "id" in case and (not isinstance(case["id"], str) or not case["id"].strip()):
        raise ValueError("'id' must be a non-empty string")
    if is_tool_case(case):
        case = parse_tool_case(case)
        _check_prompt(case["messages"])
        return case
    messages = case.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") \
                or not isinstance(message.get("content"), str):
            raise ValueError("each message is {'role': system|user|assistant, 'content': str}")
    if case.get("group", "") not in ("", HELDOUT, RETENTION):
        raise ValueError(f"'group' is {HELDOUT!r} (a held-out case, scored apart), {RETENTION!r} (a general "
                         "question the base answers, to see what a fine-tune forgot) or absent")
    if "id" in case and (not isinstance(case["id"], str) or not case["id"]):
        raise ValueError("'id' must be a non-empty string")
    _check_prompt(messages)
    expect = case.setdefault("expect", {})
    if not isinstance(expect, dict):
        raise ValueError("'expect' must be an object")
    unknown = set(expect) - set(RULES)
    if unknown:
        raise ValueError(f"unknown expectations {sorted(unknown)}")
    for name, value in expect.items():
        RULES[name].validate(value)
    if "response_format" in case:
        if "json_schema" not in expect:
            raise ValueError("'response_format' needs a 'json_schema' expectation to judge the answer by")
        try:
            check_response_format(case["response_format"])
        except InputError as exc:
            raise ValueError(str(exc)) from exc
    return case


def load_cases(path: str | os.PathLike[str] | None = None) -> list[dict]:
    """Read a JSONL cases file (the bundled SmolLM2 cases when ``path`` is None).

    Every line is checked, expectations included (types, a regex that compiles, a valid JSON
    Schema), before any model is asked anything.

    Raises:
        InputError: the file is missing, not UTF-8, empty, a line is not a valid case (an empty
            prompt, a field of the wrong type, ...) or repeats an earlier case's id (the message
            names the file, the line, the case's id and what a case needs).

    Example:
        >>> load_cases()[0]["id"]
        'capital-france'
    """
    if path is None:
        text = resources.files("slmops.toolkit.domain.data").joinpath(BUNDLED_CASES).read_text()
        source = BUNDLED_CASES
    else:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"No cases file at {file}; pass --cases FILE.jsonl (one JSON case per line).")
        text, source = artifacts.read_text(file), str(file)
    cases = []
    lines: dict[str, int] = {}  # each case's id -> the line that gave it
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = parse_case(line)
        except ValueError as exc:
            named = f" (case {_case_id(line)!r})" if _case_id(line) else ""
            raise InputError(
                f"{source}:{number}{named} is not a valid case ({exc}): it needs 'messages', a list of "
                "{'role': system|user|assistant, 'content': str} with some text, and 'expect' with any of "
                f"{list(RULES)}."
            ) from exc
        case.setdefault("id", f"case-{number}")
        if case["id"] in lines:  # results are kept by id: a second case of one id would replace the first's
            raise InputError(f"{source}:{number}: case id {case['id']!r} is already used by line {lines[case['id']]}; "
                             "give each case its own 'id'.")
        lines[case["id"]] = number
        cases.append(case)
    if not cases:
        raise InputError(f"{source} holds no cases; write one JSON case per line.")
    return cases
