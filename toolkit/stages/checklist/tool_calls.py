"""The checklist's ``tool_call`` cases: does the model call the right function with the right values, and only then?

A case (one line of the cases file, beside the text cases)::

    {"id": "...", "type": "tool_call", "messages": [...], "tools": [OpenAI tool definitions],
     "expect": {"call": {"name": "city_weather", "arguments": {"city": "Lunmere"}}}}

``expect`` is ``{"call": {"name", "arguments"}}`` (the function and the argument values that
must be present) or ``{"no_call": true}`` (the model must answer in text), optionally with
``contains_any`` (words the text answer holds, e.g. after a tool result in the history);
``tool_choice`` and ``group: "heldout"`` are optional; ``tools`` may be empty (nothing offered:
a model that calls anyway fails). Each case is asked once, greedily, through the runtime's own
tool calling (:class:`~slmops.toolkit.runtimes.foundry.LoadedModel`), and scored by
:func:`slmops.toolkit.domain.tools.check_call`: the right function, arguments that parse and validate
against the tool's JSON Schema, the required values present, no call when none is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.domain import tools
from slmops.toolkit.domain.datasets import HELDOUT
from slmops.toolkit.domain.results.checklist import Bound, Check, CheckResult, Thresholds, Unit, verdict_of

TOOL_CALL = "tool_call"
#: Most tokens a tool case may generate (the demo's calls are 21 tokens, its text answers under 20; a base that
#: never closes a call runs to this, so it bounds the negative control's cost).
TOOL_MAX_TOKENS = 40


def is_tool_case(case: dict) -> bool:
    """Whether a case is a ``tool_call`` case."""
    return case.get("type") == TOOL_CALL


def parse_tool_case(case: dict) -> dict:
    """Check a ``tool_call`` case read from the cases file (ValueError naming what is wrong).

    Returns:
        The case with its tools checked (OpenAI's rules).
    """
    messages = case.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ValueError("'messages' must be a non-empty list of messages")
    offered = case.get("tools", [])
    try:
        checked = tools.check_tools(offered) if offered else []
        tools.check_tool_choice(case.get("tool_choice"), checked)
    except InputError as exc:
        raise ValueError(str(exc)) from exc
    expect = case.get("expect")
    if not isinstance(expect, dict) or ("call" in expect) == bool(expect.get("no_call")):
        raise ValueError("a tool_call case's 'expect' is {'call': {'name', 'arguments'}} or {'no_call': true}")
    if "call" in expect:
        call = expect["call"]
        if not isinstance(call, dict) or call.get("name") not in tools.tool_names(checked) or \
                not isinstance(call.get("arguments", {}), dict):
            raise ValueError(f"'expect.call' must name an offered tool ({tools.tool_names(checked)}) with "
                             "'arguments' as an object")
    words = expect.get("contains_any")
    if words is not None and (not isinstance(words, list) or not all(isinstance(w, str) and w for w in words)):
        raise ValueError("'contains_any' must be a list of words")
    if case.get("group", "") not in ("", HELDOUT):
        raise ValueError(f"'group' is {HELDOUT!r} or absent")
    return {**case, "tools": checked}


@dataclass(frozen=True)
class ToolCaseResult:
    """One tool case, asked and scored.

    Attributes:
        id: The case's id.
        group: ``heldout`` or ``""`` (trained).
        passed: Every check held.
        problems: What failed, in words.
        calls: The ``tool_calls`` the model made.
        text: Its text answer.
        finish_reason: The runtime's.
        valid_calls: Calls whose arguments parsed and validated against their tool's schema.
    """

    id: str
    group: str
    passed: bool
    problems: tuple[str, ...]
    calls: tuple[dict, ...]
    text: str
    finish_reason: str
    valid_calls: int


def _looks_like_call(text: str, markers: tools.Markers | None) -> bool:
    """A text answer that is a tool call the runtime did not parse (no tools were offered)."""
    if markers is not None and (markers.start in text or markers.end in text):
        return True
    return re.search(r'\[\s*\{\s*"name"\s*:\s*"[^"]*"\s*,\s*"parameters"', text) is not None


def ask_tool_case(model, case: dict, *, max_tokens: int = TOOL_MAX_TOKENS) -> ToolCaseResult:
    """Ask one ``tool_call`` case (greedy) and score the answer (see the module docstring)."""
    offered = case.get("tools") or []
    expect = case["expect"]
    try:
        answer = model.generate(case["messages"], max_tokens=max_tokens, temperature=0.0,
                                tool_defs=offered or None, tool_choice=case.get("tool_choice"))
    except SlmopsError as exc:
        # The runtime refuses a malformed or interrupted call it cannot recover: a failed case.
        problem = f"the runtime refused the answer: {str(exc)[-160:]}"
        return ToolCaseResult(case["id"], case.get("group", ""), False, (problem,), (), "", "error", 0)
    calls = list(answer.tool_calls)
    check = tools.check_call(calls, offered, expect.get("call"))
    problems = list(check.problems)
    if not offered and _looks_like_call(answer.text, model.markers):
        problems.append("called a tool although none was offered")
    words = expect.get("contains_any")
    if words and not any(w.casefold() in answer.text.casefold() for w in words):
        problems.append(f"the answer contains none of [{', '.join(words)}]")
    valid = sum(1 for call in calls if not tools.call_problems(call, offered))
    return ToolCaseResult(case["id"], case.get("group", ""), not problems, tuple(problems), tuple(calls),
                          answer.text, answer.finish_reason, valid)


def run_tool_cases(model, cases: list[dict], *, max_tokens: int = TOOL_MAX_TOKENS) -> list[ToolCaseResult]:
    """Ask every ``tool_call`` case of ``cases`` (the others are skipped)."""
    return [ask_tool_case(model, case, max_tokens=max_tokens) for case in cases if is_tool_case(case)]


def tool_call_summary(results: list[ToolCaseResult]) -> dict:
    """Pass rates of the trained and held-out tool cases, and how many returned calls validated.

    Returns:
        ``{"trained": {"passed", "total", "rate"}, "heldout": {...}, "calls": {"returned", "valid"}}``.
    """
    out: dict = {}
    for label, group in (("trained", ""), (HELDOUT, HELDOUT)):
        mine = [r for r in results if r.group == group]
        passed = sum(r.passed for r in mine)
        out[label] = {"passed": passed, "total": len(mine), "rate": passed / len(mine) if mine else None}
    out["calls"] = {"returned": sum(len(r.calls) for r in results), "valid": sum(r.valid_calls for r in results)}
    return out


def _criterion(case: dict) -> str:
    """What a tool case asks, in words."""
    expect = case["expect"]
    if "call" in expect:
        values = ", ".join(f"{k}={v!r}" for k, v in (expect["call"].get("arguments") or {}).items())
        return f"calls {expect['call']['name']}({values}) with arguments valid against its schema"
    offered = "no tool offered: " if not case.get("tools") else ""
    words = f" containing any of [{', '.join(expect['contains_any'])}]" if expect.get("contains_any") else ""
    return f"{offered}no tool call, a text answer{words}"


def tool_call_checks(model, cases: list[dict], limits: Thresholds, progress: bool = False,
                     results: list[ToolCaseResult] | None = None) -> list[CheckResult]:
    """The ``tool_call`` and ``tool_call_heldout`` checks of one model: one result per case, then each pass rate.

    Args:
        results: Receives each case's :class:`ToolCaseResult` (the calls, for ``test.json``).
    """
    from tqdm.auto import tqdm

    chosen = [case for case in cases if is_tool_case(case)]
    checks: list[CheckResult] = []
    outcomes: dict[Check, list[bool]] = {Check.TOOL_CALL: [], Check.TOOL_CALL_HELDOUT: []}
    for case in tqdm(chosen, desc=f"{model.name}: tool calls", unit="case", disable=not progress or not chosen):
        result = ask_tool_case(model, case)
        if results is not None:
            results.append(result)
        check = Check.TOOL_CALL_HELDOUT if result.group == HELDOUT else Check.TOOL_CALL
        outcomes[check].append(result.passed)
        calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in result.calls)
        answer = f"[tool call] {calls}" if calls else result.text.strip()
        checks.append(CheckResult(model.name, check, case["id"], float(result.passed), Unit.SHARE, 1.0,
                                  Bound.AT_LEAST, verdict_of(result.passed), _criterion(case),
                                  "; ".join(result.problems), answer=answer[:300]))
    rates = {Check.TOOL_CALL: limits.tool_call_pass_rate, Check.TOOL_CALL_HELDOUT: limits.tool_call_heldout_pass_rate}
    for check, passed in outcomes.items():
        if passed:
            share = sum(passed) / len(passed)
            returned = sum(len(r.calls) for r in results or [])
            valid = sum(r.valid_calls for r in results or [])
            checks.append(CheckResult(
                model.name, check, f"{check}-overall", round(share, 4), Unit.SHARE, rates[check], Bound.AT_LEAST,
                verdict_of(share >= rates[check]), f">= {rates[check]:.0%} of tool cases pass",
                f"{valid} of {returned} returned calls had schema-valid arguments" if results is not None else "",
                samples=len(passed)))
    return checks
