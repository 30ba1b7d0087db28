"""The checklist's tables and sentences, rendered from its typed results (never from parsed text)."""

from __future__ import annotations

from slmops.toolkit.domain.datasets import domain_terms
from slmops.toolkit.domain.results.checklist import (
    Check,
    ChecklistReport,
    CheckResult,
    ControlResult,
    ModelReport,
    Unit,
    Verdict,
    domain_words_in,
)
from slmops.toolkit.presentation.tables import Html, html_details, html_table

#: How each verdict is marked in tables.
MARK = {Verdict.PASS: "✓ ", Verdict.FAIL: "✗ ", Verdict.INCONCLUSIVE: "? inconclusive: rerun: "}

#: The case checks whose pass rates the summary shows, in its column order.
RATE_COLUMNS = (Check.DOMAIN, Check.HELDOUT, Check.RETENTION, Check.FORMAT, Check.STRUCTURED, Check.TOOL_CALL,
                Check.TOOL_CALL_HELDOUT)

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
    """One row per model against FP32: top-1 agreement (share), KL divergence (nats), perplexity and its ratio.

    Figures are numbers, never sentences; the reference's own row says ``reference`` where a
    figure against itself means nothing, and a model that was not compared is left out.

    Example:
        >>> quality_rows([ModelReport("m-int4", [], quality=QualityRecord("m-fp32", 0.9, 0.1, 11.0, 10.0, 300)),
        ...               ModelReport("m-fp32", [])])[-1]["top1_agreement"]
        'reference'
    """
    rows = []
    references = list(dict.fromkeys(r.quality.reference for r in reports if r.quality is not None))
    for r in reports:
        if r.model in references and r.quality is None:
            first = next(q.quality for q in reports if q.quality is not None and q.quality.reference == r.model)
            rows.append({"model": r.model, "top1_agreement": "reference", "kl_divergence": "reference",
                         "perplexity": first.reference_perplexity, "perplexity_ratio": 1.0, "verdict": "reference"})
            continue
        if r.quality is None:
            continue
        checks = [c for c in r.checks if c.check is Check.QUALITY]
        failed = [f"{c.case} {describe_value(c)} against {c.criterion.split(' on ')[0]}" for c in checks
                  if c.verdict is Verdict.FAIL]
        rows.append({"model": r.model, "top1_agreement": r.quality.top1_agreement,
                     "kl_divergence": r.quality.kl_divergence, "perplexity": r.quality.perplexity,
                     "perplexity_ratio": r.quality.perplexity_ratio,
                     "verdict": ("fail: " + "; ".join(failed)) if failed else "pass" if checks else "not checked"})
    return rows


def describe_value(check: CheckResult) -> str:
    """A check's measured figure alone, with its digits (``-`` when nothing was measured)."""
    return "-" if check.value is None else f"{check.value:.{_DIGITS.get(check.unit, 2)}f}"


def checklist_table(reports: list[ModelReport]) -> list[dict]:
    """One row per check and case, one ✓/✗ column per model, every answer whole; rows with a failure first."""
    rows: dict[tuple[str, str], dict] = {}
    failing: set[tuple[str, str]] = set()
    for r in reports:
        for c in r.checks:
            row = rows.setdefault((c.check, c.case), {"check": str(c.check), "case": c.case, "threshold": c.criterion})
            row[r.model] = MARK[c.verdict] + describe(c)
            if c.verdict is Verdict.FAIL:
                failing.add((c.check, c.case))
    return sorted(rows.values(), key=lambda row: (row["check"], row["case"]) not in failing)


def checklist_details(reports: list[ModelReport], *, style: bool = True) -> Html:
    """The whole checklist, one collapsible section per check (failing checks first and open), every case shown.

    Each section's summary counts the passes per model (``int4 16/16``); inside, one row per case with
    one ✓/✗ column per model, failing cases first, answers whole (wrapped, never cut).
    """
    table = checklist_table(reports)
    models = [r.model for r in reports]
    order = list(dict.fromkeys(row["check"] for row in table))
    sections = []
    for check in sorted(order, key=lambda name: not any(row["check"] == name and any(
            str(row.get(m, "")).startswith(MARK[Verdict.FAIL]) for m in models) for row in table)):
        rows = [row for row in table if row["check"] == check]
        counts = []
        for m in models:
            marks = [str(row[m]) for row in rows if m in row]
            if marks:
                counts.append(f"{m} {sum(x.startswith(MARK[Verdict.PASS]) for x in marks)}/{len(marks)} pass")
        failed = any(str(row.get(m, "")).startswith(MARK[Verdict.FAIL]) for row in rows for m in models)
        summary = f"{check}: {', '.join(counts)}" + (" (failures first)" if failed else "")
        sections.append((summary, html_table(rows, ["case", "threshold", *models], style=False), failed))
    return html_details(sections, style=style)


def before_after(control: ControlResult, report: ModelReport, count: int = 4) -> list[dict]:
    """A few domain cases side by side: the base's answer (the control) and the fine-tune's.

    Example:
        >>> before_after(control, reports[0])[0]["case"]
        'trained-capital'
    """
    tuned = {c.case: c.answer or "" for c in report.checks if c.check in (Check.DOMAIN, Check.HELDOUT)}
    cases = [case for case in control.answers if case in tuned][:count]
    return [{"case": case, "base": control.answers[case], report.model: tuned[case]} for case in cases]


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


def retention_sentences(report: ChecklistReport) -> list[str]:
    """What the fine-tune gained and what it forgot, in words: the domain pass rate beside the general questions kept.

    One sentence for the counts (the base's correct general answers, how many each build keeps and
    forgets, beside its domain pass rate and the base's), and one naming the builds that answer a
    general question with a fact of the domain, quoting one answer.

    Example:
        >>> retention_sentences(read_report("outputs/demo/test.json"))[1]
        "smollm2-fp32, smollm2-int8 and smollm2-int4 answer general questions with a fact of the fine-tune's ..."
    """
    models = [m for m in report.models if m.retention is not None]
    if not models:
        return []
    control = report.control
    base = (f"the base ({control.model}) answers {control.trained_passed}/{control.trained_total} of the trained "
            "questions; " if control is not None and control.trained_total else "")
    parts = []
    for m in models:
        r, domain = m.retention, m.rate(Check.DOMAIN)
        gain = f"domain {rate_words(domain)}, " if domain is not None and domain.passes is not None else ""
        kept = len(r.retained)
        parts.append(f"{m.model} {gain}keeps {kept} and forgets {len(r.forgotten)}"
                     + (f" ({', '.join(r.forgotten)})" if r.forgotten else ""))
    asked = len(models[0].retention.retained) + len(models[0].retention.forgotten)
    reference = models[0].retention.reference
    held = (f"of the {asked} general questions {reference} answers correctly" if reference != "expectations"
            else f"of the {asked} general questions (judged by their expected words: no base model in this run)")
    sentences = [f"What the fine-tune gained and what it forgot: {base}{held}, " + "; ".join(parts) + "."]
    leaked = {m.model: m.retention.domain_answers for m in models if m.retention.domain_answers}
    if leaked:
        sentences.append(_domain_fact_sentence(leaked))
    return sentences


def _domain_fact_sentence(leaked: dict[str, dict[str, str]]) -> str:
    """One sentence for every build that answers a general question with a domain fact: the builds, the
    questions (once when every build has the same ones), and one answer quoted."""
    names = list(leaked)
    builds = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    questions = {tuple(answers) for answers in leaked.values()}
    which = (", ".join(next(iter(questions))) if len(questions) == 1
             else "; ".join(f"{name}: {', '.join(answers)}" for name, answers in leaked.items()))
    distinct = {case for answers in leaked.values() for case in answers}
    case, answer = next(iter(leaked[names[0]].items()))
    example = (f": {answer!r}" if len(names) == 1 and len(distinct) == 1
               else f"; {names[0]}: {answer!r}" if len(distinct) == 1 else f"; {names[0]} to {case}: {answer!r}")
    return (f"{builds} answer{'s' if len(names) == 1 else ''} "
            f"{'a general question' if len(distinct) == 1 else 'general questions'} with a fact of the fine-tune's "
            f"domain ({which}){example}")  # the quoted answer ends the sentence


def domain_fact_note(answer: str, cases: list[dict]) -> str:
    """A sentence when an answer to a general question holds a fact of the fine-tune's domain, else empty.

    Args:
        answer: The model's answer to a general question (the chat example's).
        cases: The run's checklist cases (the domain's words come from its trained questions).

    Example:
        >>> domain_fact_note("The capital of France is Quennport.", load_cases("outputs/demo/cases.jsonl"))
        "This answer names Quennport, a fact of the fine-tune's domain, not of the question: ..."
    """
    found = domain_words_in(answer, domain_terms(cases))
    if not found:
        return ""
    return (f"This answer names {', '.join(found)}, a fact of the fine-tune's domain, not of the question: the "
            "fine-tune answers general questions from what it was trained on (the checklist's retention family "
            "counts what it forgot).")
