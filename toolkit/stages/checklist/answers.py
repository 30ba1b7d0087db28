"""The case checks: each case asked once, its answer judged per check, then each check's pass rate and ``stop``.

Which checks a case feeds is a list of :class:`CaseCheck` (:data:`CASE_CHECKS`): the cases it
selects, the rules it judges by, whether it asks again with its own request options (the
``structured`` check sends ``response_format``) and its pass-rate threshold. A new kind of case
is one more entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from slmops.toolkit.core.errors import FoundryRequestError, InputError
from slmops.toolkit.domain.datasets import HELDOUT, RETENTION
from slmops.toolkit.domain.results.checklist import Bound, Check, CheckResult, Thresholds, Unit, verdict_of
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.stages.checklist.cases import CONTENT_RULES, FORMAT_RULES, judge
from slmops.toolkit.stages.checklist.tool_calls import TOOL_MAX_TOKENS, is_tool_case, tool_call_checks


@dataclass(frozen=True)
class CaseCheck:
    """One check that judges cases' answers.

    Attributes:
        check: The checklist item it reports as.
        selects: Whether a case counts for this check.
        rules: The rules (by name) the answer is judged by.
        pass_rate: The share of its cases that must pass, from the thresholds.
        request: ``None`` to judge the case's free answer; else the extra request options
            (e.g. ``response_format``) to ask the case again with.
        criterion: The rules in words, as the report states them (from :func:`judge`'s).
    """

    check: Check
    selects: Callable[[dict], bool]
    rules: tuple[str, ...]
    pass_rate: Callable[[Thresholds], float]
    request: Callable[[dict], dict] | None = None
    criterion: Callable[[str], str] = lambda words: words


def _has(rules: tuple[str, ...]) -> Callable[[dict], bool]:
    return lambda case: any(rule in case["expect"] for rule in rules)


def _content(group: str | None) -> Callable[[dict], bool]:
    """Content cases of a group (trained, held-out or retention); a case that expects nothing counts as content."""
    def selects(case: dict) -> bool:
        mine = (case.get("group") or None) == group
        return mine and (_has(CONTENT_RULES)(case) or not case["expect"])
    return selects


def structured_request(case: dict) -> dict:
    """The request options of a ``json_schema`` case asked as an application wanting structured output would."""
    return {"response_format": case.get("response_format") or {
        "type": "json_schema", "json_schema": {"name": case["id"], "schema": case["expect"]["json_schema"]}}}


#: The case checks, in the order they report.
CASE_CHECKS: list[CaseCheck] = [
    CaseCheck(Check.DOMAIN, _content(None), CONTENT_RULES, lambda t: t.domain_pass_rate),
    CaseCheck(Check.HELDOUT, _content(HELDOUT), CONTENT_RULES, lambda t: t.heldout_pass_rate),
    # General questions: held to the base model's answers when the negative control asked them (write_report).
    CaseCheck(Check.RETENTION, _content(RETENTION), CONTENT_RULES, lambda t: t.retention_share),
    CaseCheck(Check.FORMAT, _has(FORMAT_RULES), FORMAT_RULES, lambda t: t.format_pass_rate),
    CaseCheck(Check.STRUCTURED, lambda case: "json_schema" in case["expect"], FORMAT_RULES,
              lambda t: t.format_pass_rate, structured_request, lambda words: f"with response_format: {words}"),
]


def generation(model: LoadedModel, case: dict, max_tokens: int, seed: int,
               **options: object) -> tuple[str, str, int]:
    """A case's ``(answer, finish_reason, completion tokens)``; a runtime failure is answered as ``error``."""
    try:
        result = model.generate(case["messages"], max_tokens=max_tokens, seed=seed, **options)
    except FoundryRequestError as exc:
        return f"(the runtime failed: {exc})", "error", 0
    return result.text, result.finish_reason, result.completion_tokens


def requests_of(cases: list[dict]) -> int:
    """Requests :func:`case_checks` sends for ``cases``: one free answer each, plus one per check that asks again."""
    text = [case for case in cases if not is_tool_case(case)]
    return len(cases) + sum(1 for check in CASE_CHECKS if check.request for case in text if check.selects(case))


def stop_check(name: str, finishes: list[tuple[str, int]], max_tokens: int, limits: Thresholds) -> CheckResult:
    """Whether the free answers end on a stop token, well before ``max_tokens``.

    Args:
        finishes: ``(finish reason, completion tokens)`` per answer.
    """
    stopped = [tokens for reason, tokens in finishes if reason == "stop" and tokens < max_tokens]
    share = len(stopped) / len(finishes)
    ran_on = sum(reason == "length" for reason, _ in finishes)
    longest = f", longest stopped answer {max(stopped)} tokens" if stopped else ""
    return CheckResult(
        name, Check.STOP, "stop-overall", round(share, 4), Unit.SHARE, limits.stop_pass_rate, Bound.AT_LEAST,
        verdict_of(share >= limits.stop_pass_rate),
        f">= {limits.stop_pass_rate:.0%} of the cases' answers end with finish_reason stop before max tokens "
        f"({max_tokens}); a model that never ends its turn fails whatever its text",
        f"{ran_on} ran to max tokens{longest}"
        + ("" if stopped else ": the end-of-turn token does not stop generation (run `slmops doctor` on the "
           "model folder)"), samples=len(finishes))


def check_cases_fit(model: LoadedModel, cases: list[dict], max_tokens: int) -> None:
    """Refuse, before any case is asked, a case whose prompt and answer budget overrun the model's context.

    Raises:
        InputError: names the first such case, its prompt's tokens and the context.
    """
    context = model.context_length
    if not context:
        return
    for case in cases:
        tool = is_tool_case(case)
        budget = TOOL_MAX_TOKENS if tool else max_tokens
        left = model.room(case["messages"], case.get("tools") if tool and model.markers is not None else None)
        if left is not None and left < budget:
            raise InputError(
                f"Case {case['id']!r} does not fit {model.name}: its prompt is {context - left} tokens and the "
                f"checklist allows {budget} for the answer, over the model's {context}-token context. Shorten "
                "the case or leave it out of the cases file.")


def case_checks(model: LoadedModel, cases: list[dict], limits: Thresholds, max_tokens: int, seed: int,
                progress: bool, generated: list[list] | None = None) -> list[CheckResult]:
    """Every case check (:data:`CASE_CHECKS`) of one model, then the pass rate of each and the ``stop`` check.

    Args:
        generated: Receives ``[case id, finish reason, completion tokens]`` per free answer.

    Example:
        >>> [c.case for c in case_checks(model, load_cases(), Thresholds(), 48, 0, False)][-1]
        'stop-overall'
    """
    from tqdm.auto import tqdm

    check_cases_fit(model, cases, max_tokens)
    tool_cases = [case for case in cases if is_tool_case(case)]  # judged by their calls, apart
    cases = [case for case in cases if not is_tool_case(case)]
    checks: list[CheckResult] = []
    scores: dict[Check, list[bool]] = {c.check: [] for c in CASE_CHECKS}
    finishes: list[tuple[str, int]] = []

    def record(spec: CaseCheck, case: dict, answer: str) -> None:
        passed, words, score = judge(answer, case["expect"], spec.rules)
        scores[spec.check].append(passed)
        checks.append(CheckResult(model.name, spec.check, case["id"], round(score, 4), Unit.SHARE, 1.0, Bound.AT_LEAST,
                                  verdict_of(passed), spec.criterion(words), answer=answer.strip()[:300]))

    free = [spec for spec in CASE_CHECKS if spec.request is None]
    for case in tqdm(cases, desc=f"{model.name}: cases", unit="case", disable=not progress):
        answer, reason, tokens = generation(model, case, max_tokens, seed)
        finishes.append((reason, tokens))
        if generated is not None:
            generated.append([case["id"], reason, tokens])
        for spec in free:
            if spec.selects(case):
                record(spec, case, answer)
    for spec in (spec for spec in CASE_CHECKS if spec.request is not None):
        chosen = [case for case in cases if spec.selects(case)]
        for case in tqdm(chosen, desc=f"{model.name}: {spec.check}", unit="case", disable=not progress or not chosen):
            record(spec, case, generation(model, case, max_tokens, seed, **spec.request(case))[0])
    for spec in CASE_CHECKS:
        if scores[spec.check]:
            rate, share = spec.pass_rate(limits), sum(scores[spec.check]) / len(scores[spec.check])
            checks.append(CheckResult(model.name, spec.check, f"{spec.check}-overall", round(share, 4), Unit.SHARE,
                                      rate, Bound.AT_LEAST, verdict_of(share >= rate), f">= {rate:.0%} of cases pass",
                                      samples=len(scores[spec.check])))
    if finishes:
        checks.append(stop_check(model.name, finishes, max_tokens, limits))
    return checks + tool_call_checks(model, tool_cases, limits, progress, [])
