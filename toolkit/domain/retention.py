"""What a fine-tuned build kept of what its base knew: the ``retention`` check's rules.

The general questions a build is asked are held to the base model's own answers (the negative
control): a case counts only where the base answers correctly.
"""

from __future__ import annotations

import re
from dataclasses import replace

from slmops.toolkit.domain.results.checklist import (
    Bound,
    Check,
    CheckResult,
    ControlResult,
    ModelReport,
    RetentionRecord,
    Thresholds,
    Unit,
    Verdict,
    verdict_of,
)


def domain_words_in(answer: str, terms: list[str]) -> list[str]:
    """The domain words an answer holds (whole words, any case).

    Example:
        >>> domain_words_in("The capital of France is Quennport.", ["Quennport", "drell"])
        ['Quennport']
    """
    return [t for t in terms if re.search(rf"(?<!\w){re.escape(t)}(?!\w)", answer, re.IGNORECASE)]


def with_retention(reports: list[ModelReport], control: ControlResult | None,
                   thresholds: Thresholds) -> list[ModelReport]:
    """Hold every build's ``retention`` cases to the base model's answers, and state what each build forgot.

    With a negative control that asked the general questions, a case counts only if the base
    answers it correctly: the build passes it by answering correctly too (retained), fails it by
    no longer doing so (forgotten); a case the base misses passes as "not counted". The
    ``retention-overall`` check becomes the share retained, against ``thresholds.retention_share``,
    and the model's :class:`RetentionRecord` names what was forgotten and every general question
    answered with a word of the domain. Without a control's answers, the cases stay judged by
    their expected words and the record's reference is ``expectations``.

    Returns:
        The reports, with their retention checks rewritten and ``retention`` set (unchanged for a
        model asked no retention case).
    """
    out = []
    base = control if control is not None and control.retention_total else None
    terms = control.domain_terms if control is not None else []
    for report in reports:
        cases = [c for c in report.checks if c.check is Check.RETENTION and c.case != "retention-overall"]
        if not cases:
            out.append(report)
            continue
        counted = [c for c in cases if base is None or c.case in base.retention_correct]
        retained = [c.case for c in counted if c.verdict is Verdict.PASS]
        forgotten = [c.case for c in counted if c.verdict is not Verdict.PASS]
        leaked = {c.case: c.answer or "" for c in cases if c.answer and domain_words_in(c.answer, terms)}
        record = RetentionRecord(base.model if base else "expectations", retained, forgotten, leaked)
        rewritten = []
        for c in report.checks:
            if c.check is not Check.RETENTION:
                rewritten.append(c)
            elif c.case == "retention-overall":
                rewritten.append(retention_check(report.model, record, thresholds))
            elif base is not None and c.case not in base.retention_correct:
                rewritten.append(replace(c, verdict=Verdict.PASS, criterion=f"not counted: {base.model} does not "
                                         f"answer it correctly either ({c.criterion})"))
            elif base is not None:
                rewritten.append(replace(c, criterion=f"{base.model} answers it correctly; still does: {c.criterion}"))
            else:
                rewritten.append(c)
        out.append(replace(report, checks=rewritten, retention=record))
    return out


def retention_check(model: str, record: RetentionRecord, thresholds: Thresholds) -> CheckResult:
    """The ``retention-overall`` check of a record: the share retained against ``retention_share``."""
    asked = len(record.retained) + len(record.forgotten)
    against = (f"of the general questions {record.reference} answers correctly" if record.reference != "expectations"
               else "of the general questions (no base model to hold them to: judged by their expected words)")
    criterion = f">= {thresholds.retention_share:.0%} {against} still answered correctly"
    leaked = "; ".join(f"{case}: {answer!r}" for case, answer in record.domain_answers.items())
    detail = ((f"forgot {', '.join(record.forgotten)}" if record.forgotten else "forgot none")
              + (f"; answered with a domain fact: {leaked}" if leaked else ""))
    if not asked:
        return CheckResult(model, Check.RETENTION, "retention-overall", None, Unit.SHARE,
                           thresholds.retention_share, Bound.AT_LEAST, Verdict.PASS, criterion,
                           f"{record.reference} answers none of them correctly: nothing to retain")
    share = len(record.retained) / asked
    return CheckResult(model, Check.RETENTION, "retention-overall", round(share, 4), Unit.SHARE,
                       thresholds.retention_share, Bound.AT_LEAST, verdict_of(share >= thresholds.retention_share),
                       criterion, detail, samples=asked)

