"""The checklist's tables and sentences, rendered from its typed results (never from parsed text)."""

from __future__ import annotations

from slmops.toolkit.domain.results.checklist import (
    Check,
    ChecklistReport,
    CheckResult,
    ControlResult,
    ModelReport,
    Unit,
    Verdict,
)

#: How each verdict is marked in tables.
MARK = {Verdict.PASS: "✓ ", Verdict.FAIL: "✗ ", Verdict.INCONCLUSIVE: "? inconclusive: rerun: "}

#: The case checks whose pass rates the summary shows, in its column order.
RATE_COLUMNS = (Check.DOMAIN, Check.HELDOUT, Check.FORMAT, Check.STRUCTURED, Check.TOOL_CALL, Check.TOOL_CALL_HELDOUT)

#: Digits a figure of each unit is shown with.
_DIGITS = {Unit.SHARE: 3, Unit.NATS: 4, Unit.RATIO: 2, Unit.MS: 2, Unit.MIB_PER_100_REQUESTS: 2, Unit.SECONDS: 2}


def rate_words(check: CheckResult) -> str:
    """A pass rate as ``"passed/total = share"``.

    Example:
        >>> rate_words(CheckResult("m", Check.DOMAIN, "domain-overall", 0.75, Unit.SHARE, 0.8, Bound.AT_LEAST,
        ...                        Verdict.FAIL, ">= 80% of cases pass", samples=4))
        '3/4 = 75%'
    """
    return f"{check.passes}/{check.samples} = {check.value:.0%}"


def describe(check: CheckResult) -> str:
    """What a check measured, in words, from its fields: the answer with its score, a pass rate, or the figure.

    Example:
        >>> describe(CheckResult("m", Check.QUALITY, "kl-divergence", 0.0123, Unit.NATS, 1.0, Bound.AT_MOST,
        ...                      Verdict.PASS, "<= 1.0 nats"))
        '0.0123'
    """
    if check.answer is not None:
        return f"score {check.value:.2f}: {check.answer}"
    if check.value is None:
        return check.detail
    if check.check is Check.EDGE:
        return f"{check.detail} in {check.value:.2f} s"
    if check.passes is not None and check.case.endswith("-overall"):
        words = rate_words(check) + (" stopped" if check.check is Check.STOP else "")
        return f"{words}; {check.detail}" if check.detail else words
    return check.detail or f"{check.value:.{_DIGITS.get(check.unit, 2)}f}"


def summary_rows(report: ChecklistReport) -> list[dict]:
    """One row per model: passed, total, the pass rate of each case check, what failed and what was inconclusive.

    Example:
        >>> summary_rows(read_report("outputs/demo/test.json"))[0]["domain"]
        '16/16 = 100%'
    """
    rows = []
    for m in report.models:
        rates = {check: m.rate(check) for check in RATE_COLUMNS}
        rows.append({"model": m.model, "passed": sum(c.verdict is Verdict.PASS for c in m.checks),
                     "total": len(m.checks),
                     **{str(check): (describe(r) if r is not None else "") for check, r in rates.items()},
                     "failed": ", ".join(f"{c.check}/{c.case}" for c in m.checks if c.verdict is Verdict.FAIL) or "-",
                     "inconclusive": ", ".join(f"{c.check}/{c.case}" for c in m.checks if c.inconclusive) or "-"})
    return rows


def quality_rows(reports: list[ModelReport]) -> list[dict]:
    """One row per quantized model: top-1 agreement, KL divergence and perplexity against FP32, with verdicts."""
    rows = []
    for r in reports:
        quality = {c.case: c for c in r.checks if c.check is Check.QUALITY}
        if quality:
            rows.append({"model": r.model, **{case: MARK[c.verdict] + describe(c) for case, c in quality.items()}})
    return rows


def checklist_table(reports: list[ModelReport]) -> list[dict]:
    """One row per check and case, one ✓/✗ column per model (for notebooks)."""
    rows: dict[tuple[str, str], dict] = {}
    for r in reports:
        for c in r.checks:
            row = rows.setdefault((c.check, c.case), {"check": str(c.check), "case": c.case, "threshold": c.criterion})
            row[r.model] = MARK[c.verdict] + describe(c)[:60]
    return list(rows.values())


def before_after(control: ControlResult, report: ModelReport, count: int = 4) -> list[dict]:
    """A few domain cases side by side: the base's answer (the control) and the fine-tune's.

    Example:
        >>> before_after(control, reports[0])[0]["case"]
        'trained-capital'
    """
    tuned = {c.case: c.answer or "" for c in report.checks if c.check in (Check.DOMAIN, Check.HELDOUT)}
    cases = [case for case in control.answers if case in tuned][:count]
    return [{"case": case, "base": control.answers[case][:120], report.model: tuned[case][:120]} for case in cases]


def control_verdict(control: ControlResult) -> str:
    """What the negative control says about the cases, in words.

    Example:
        >>> control_verdict(ControlResult("base", 0, 16, 1, 16, 0.0, 0.1, True))
        'the base model passes 0% of the domain cases (at most 10%): they test what the fine-tune added'
    """
    kept = (f" (answers asked at {control.kept_from}, kept: same base build, cases and runtime)"
            if control.kept_from else "")
    if control.tests_the_fine_tune is None:
        return "the cases have no domain expectations, so there is nothing for the base to answer"
    if control.tests_the_fine_tune:
        return (f"the base model passes {control.pass_rate:.0%} of the domain cases (at most "
                f"{control.max_pass_rate:.0%}): they test what the fine-tune added" + kept)
    return (f"the base model passes {control.pass_rate:.0%} of the domain cases, over {control.max_pass_rate:.0%}: "
            "they test what the base already knew, not the fine-tune; write cases only the fine-tune can answer"
            + kept)


def control_row(control: ControlResult) -> dict:
    """The negative control as the report shows it: the base model, its counts in words and the verdict."""
    return {"model": control.model, "trained": f"{control.trained_passed}/{control.trained_total}",
            "heldout": f"{control.heldout_passed}/{control.heldout_total}", "verdict": control_verdict(control),
            "tools": f"{control.tool_passed}/{control.tool_total}" if control.tool_total else ""}
