"""Which precision of a run to deploy, and why each other one lost: the recommendation's rules.

Pure: it reads a run's figures (:class:`RunFigures`, loaded from the run folder by
:func:`slmops.toolkit.presentation.compare.load_run`) and decides; the pages and the CLI render
the :class:`Recommendation`. The timing rule (:func:`judge_timing`: a change within two
standard deviations of the difference is noise) is shared with the run comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from slmops.toolkit.domain.provenance import RunRecord
from slmops.toolkit.domain.results.bench import BenchRow
from slmops.toolkit.domain.results.checklist import QualityRecord
from slmops.toolkit.domain.results.deployment import (
    NOT_MEASURED,
    Outcome,
    PrecisionFigures,
    PrecisionOutcome,
    Recommendation,
    TimingJudgement,
)
from slmops.toolkit.domain.verdicts import CASE_FAMILIES, PAIRED_TEST, Difference, PairedComparison, family_comparisons


@dataclass(frozen=True)
class RunFigures:
    """What one run folder holds, by precision.

    Attributes:
        name: The run folder's name.
        params: Its ``params.json``.
        record: Its ``run.json`` (inputs' fingerprints, seed, versions, machine; None when it has none).
        sizes: Size on disk in MB.
        size_ratios: Size over the FP32 build's (measured, or estimated when FP32 was not built).
        quality: Each compared precision's figures against the FP32 build (top-1 agreement, KL, perplexity).
        verdicts: ``(precision, check, case)`` to ``pass``, ``fail`` or ``inconclusive``.
        timings: ``(precision, engine, prompt tokens, generated tokens, threads)`` to the bench row.
        headline: The benchmark's headline row per precision (Foundry Local, shortest prompt).
        first_token: Per precision, the Foundry Local row whose prompt is nearest :data:`TYPICAL_PROMPT`
            tokens (its ``ttft_ms``, ``decode_tps``, ``target_gen_tokens``): a typical request.
        isa: The benchmark machine's vector extensions (``bench.json`` metadata).
        int4_recipe: The INT4 recipe the run deployed, when the recipe comparison put it in place
            (its manifest's ``recipe``); empty: the one ``params.json`` names.
    """

    name: str
    params: dict = field(default_factory=dict)
    record: RunRecord | None = None
    sizes: dict = field(default_factory=dict)
    size_ratios: dict = field(default_factory=dict)
    quality: dict[str, QualityRecord] = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    timings: dict[tuple[str, str, int, int, int], BenchRow] = field(default_factory=dict)
    headline: dict[str, BenchRow] = field(default_factory=dict)
    first_token: dict[str, BenchRow] = field(default_factory=dict)
    isa: dict = field(default_factory=dict)
    int4_recipe: str = ""


#: Prompt tokens of a typical request, for the first-token figure the recommendation weighs.
TYPICAL_PROMPT = 128


#: A smaller precision is recommended while a typical request (first token plus the generated
#: tokens) takes at most this many times the fastest passing precision's.
LATENCY_SLACK = 1.25


def side_by_side(runs: list[tuple[str, RunFigures]]) -> list[PrecisionFigures]:
    """One row per run and precision: size, checks passed, top-1 agreement, decode, TTFT, peak RSS.

    The sweep page shows it for every run of a sweep; a comparison for its two runs.
    """
    rows = []
    for label, run in runs:
        precisions = list(dict.fromkeys([*run.sizes, *(p for p, _, _ in run.verdicts)]))
        for precision in precisions or [NOT_MEASURED]:
            checks = [verdict for (p, _, _), verdict in run.verdicts.items() if p == precision]
            unsure = checks.count("inconclusive")
            head = run.headline.get(precision)
            rows.append(PrecisionFigures(
                run=label, precision=precision, size_mb=run.sizes.get(precision, NOT_MEASURED),
                x_fp32=run.size_ratios.get(precision) or NOT_MEASURED,
                checks_passed=(f"{checks.count('pass')}/{len(checks)}" + (f" ({unsure} inconclusive)" if unsure
                                                                           else "")) if checks else NOT_MEASURED,
                top1_agreement=run.quality[precision].top1_agreement if precision in run.quality
                else "reference" if precision == "fp32" and run.quality else NOT_MEASURED,
                **({"decode_tps": head.decode_tps, "ttft_ms": head.ttft_ms, "peak_rss_mib": head.peak_rss_mib}
                   if head else {})))
    return rows


def _typical_ms(run: RunFigures, p: str) -> float | None:
    """A typical request's time: first token at about :data:`TYPICAL_PROMPT` prompt tokens plus its generated tokens."""
    row = run.first_token.get(p) or run.headline.get(p)
    if row is None or not row.decode_tps:
        return None
    return row.ttft_ms + ((row.target_gen_tokens or 32) - 1) / row.decode_tps * 1000


def _slow_start(run: RunFigures, p: str) -> str:
    """Why precision ``p`` starts slower than FP32, in words, when it does (first token at a typical prompt).

    Slower means beyond the two rows' measured spread (:func:`judge_timing`'s rule: more than 2 sd of
    the difference); a first token inside the noise is not called slower.
    """
    mine, base = run.first_token.get(p), run.first_token.get("fp32")
    if p == "fp32" or mine is None or base is None or not mine.ttft_ms or not base.ttft_ms:
        return ""
    if judge_timing("ttft_ms", base, mine).judged != "slower":
        return ""
    text = (f"{p}'s first token at {mine.target_prompt_tokens} prompt tokens is slower than fp32's "
            f"({mine.ttft_ms:.0f} against {base.ttft_ms:.0f} ms)")
    isa = run.isa or {}
    if isa and not (isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8")):
        return (text + ": this CPU has no AVX-512 VNNI, AVX-VNNI or AMX, so ONNX Runtime's quantized MatMuls lack "
                "a fast integer dot product for the compute-bound prompt pass (decode, bound by memory bandwidth, "
                "still gains)")
    if isa:
        return text + " although this CPU has integer dot-product instructions (the instruction set is not why)"
    return text


def failed_words(failed: list[tuple[str, str]]) -> str:
    """The checks a precision failed, in words (the first three, then how many more: never a bare ellipsis).

    Example:
        >>> failed_words([("domain", "capital")])
        'failed domain/capital'
    """
    return "failed " + ", ".join(f"{check}/{case}" for check, case in failed[:3]) + (
        f" and {len(failed) - 3} more" if len(failed) > 3 else "")


def _decode(run: RunFigures, p: str) -> float:
    """Precision ``p``'s headline decode speed (tokens/s), 0 when not measured."""
    row = run.headline.get(p)
    return row.decode_tps if row is not None else 0.0


@dataclass(frozen=True)
class _Standing:
    """Where each checked precision stands before the rows are written (each dict by precision).

    Attributes:
        checked: Precisions with any verdict, in the run's order.
        comparisons: Each precision against FP32 per case family (the paired tests).
        worse: The families a precision loses to FP32 by the paired test.
        shared: ``(check, case)`` every build failed, FP32 among them: the model's own miss.
        failed: The ``(check, case)`` a precision failed, outside the paired families and the shared misses.
        below: The paired families whose overall check a precision failed.
        unsure: A precision's inconclusive checks, as ``check/case``.
        typical: A passing precision's typical request time in ms (:func:`_typical_ms`).
        quick: The passing precisions within :data:`LATENCY_SLACK` of the fastest, smallest first.
        choice: The recommended precision, if any.
    """

    checked: list[str]
    comparisons: dict[str, list[PairedComparison]]
    worse: dict[str, list[PairedComparison]]
    shared: list[tuple[str, str]]
    failed: dict[str, list[tuple[str, str]]]
    below: dict[str, list[str]]
    unsure: dict[str, list[str]]
    typical: dict[str, float | None]
    quick: list[str]
    choice: str | None


def _standing(run: RunFigures) -> _Standing:
    """Apply :func:`recommend`'s rules to ``run``'s verdicts and timings: who passes, who is quick, which is chosen."""
    checked = list(dict.fromkeys(p for p, _, _ in run.verdicts))
    # Case families are decided against FP32 by a paired test over their cases, never by single cases:
    # FP32 is the reference (it loses no family), and a build loses one only where the test tells it from chance.
    comparisons = family_comparisons(run.verdicts, "fp32")
    # Only families FP32 was asked are paired; a family without FP32's answers counts case by case.
    paired_families = {check for q, check, _ in run.verdicts if q == "fp32" and check in CASE_FAMILIES}
    worse = {p: [c for c in comparisons.get(p, []) if c.difference is Difference.WORSE] for p in checked}
    # A miss of every build, FP32 among them, is the model's own: it tells no precision from another.
    ran: dict[tuple[str, str], list[str]] = {}
    for (q, check, case), v in run.verdicts.items():
        ran.setdefault((check, case), []).append(v)
    shared = [key for key, verdicts in ran.items() if len(verdicts) > 1 and set(verdicts) == {"fail"}
              and run.verdicts.get(("fp32", *key)) == "fail"]
    failed = {p: [(check, case) for (q, check, case), v in run.verdicts.items()
                  if q == p and v == "fail" and (check, case) not in shared
                  and check not in paired_families] for p in checked}
    below = {p: [check for (q, check, case), v in run.verdicts.items() if q == p and v == "fail"
                 and check in paired_families and case == f"{check}-overall"] for p in checked}
    unsure = {p: [f"{check}/{case}" for (q, check, case), v in run.verdicts.items() if q == p and v == "inconclusive"]
              for p in checked}
    passing = sorted((p for p in checked if not failed[p] and not worse[p]),
                     key=lambda p: (run.sizes.get(p, math.inf), -_decode(run, p)))
    typical = {p: _typical_ms(run, p) for p in passing}
    timed = [t for t in typical.values() if t is not None]
    fastest = min(timed) if timed else None
    quick = [p for p in passing if fastest is None or typical[p] is None or typical[p] <= LATENCY_SLACK * fastest]
    return _Standing(checked, comparisons, worse, shared, failed, below, unsure, typical, quick,
                     quick[0] if quick else None)


def _typical_words(run: RunFigures, standing: _Standing, p: str) -> str:
    """Precision ``p``'s typical request in words: its time, first token and decode speed."""
    row = run.first_token.get(p) or run.headline.get(p) or BenchRow()
    return (f"a typical request {standing.typical[p]:.0f} ms: first token {row.ttft_ms:.0f} ms at "
            f"{row.target_prompt_tokens} prompt tokens, {_decode(run, p) or row.decode_tps:.0f} tok/s")


def _failed_reason(run: RunFigures, standing: _Standing, p: str) -> str:
    """Why precision ``p`` failed, in words: the checks it failed and the families it loses to FP32."""
    failed = standing.failed[p] if standing.failed.get(p) else []
    why = "; ".join([*([failed_words(failed)] if failed else []),
                     *(f"worse than fp32 on {c.family} ({c.reference_only} cases only fp32 passes, "
                       f"{c.candidate_only} only {p}; {PAIRED_TEST} p = {c.p_value:.3f})" for c in standing.worse[p])])
    structured = [v for (q, check, _), v in run.verdicts.items() if q == p and check == "structured"]
    if (structured and all(v == "pass" for v in structured) and standing.failed[p]
            and all(check == "format" for check, _ in standing.failed[p])):
        why += " (passes with response_format: deployable where the application asks for structured output)"
    return why


def _outcome(run: RunFigures, standing: _Standing, p: str) -> tuple[Outcome, str]:
    """Precision ``p``'s outcome and its verdict in words (for a failed one: "lost: " and its reason)."""
    choice = standing.choice
    if p == choice:
        return Outcome.RECOMMENDED, "recommended"
    if standing.failed.get(p) or standing.worse.get(p):
        return Outcome.FAILED, "lost: " + _failed_reason(run, standing, p)
    if p not in standing.failed:
        return Outcome.NOT_CHECKED, "not checked"
    if run.sizes.get(p, math.inf) > run.sizes.get(choice, math.inf):
        return Outcome.LARGER, f"lost: larger ({run.sizes[p]:.1f} MB against {run.sizes[choice]:.1f})"
    if p not in standing.quick:
        return Outcome.SLOWER, (f"lost: slower ({_typical_words(run, standing, p)}; against "
                                f"{standing.typical[choice]:.0f} ms)" if choice and
                                standing.typical.get(choice) is not None else "lost: slower")
    return Outcome.SLOWER, f"lost: slower ({_decode(run, p):.0f} tok/s against {_decode(run, choice):.0f})"


def _rows(run: RunFigures, standing: _Standing) -> tuple[list[PrecisionOutcome], dict[str, str]]:
    """One row per precision (its figures, outcome and verdict), and the reason of each that failed."""
    rows = []
    reasons: dict[str, str] = {}
    for row in side_by_side([("", run)]):
        p = row.precision
        first = run.first_token.get(p)
        outcome, verdict = _outcome(run, standing, p)
        if outcome is Outcome.FAILED:
            reasons[p] = verdict.removeprefix("lost: ")
        if standing.unsure.get(p) and not standing.failed.get(p) and not standing.worse.get(p):
            verdict += f"; inconclusive: rerun ({', '.join(standing.unsure[p][:3])})"
        rows.append(PrecisionOutcome(row, first.ttft_ms if first is not None else NOT_MEASURED, outcome, verdict))
    return rows, reasons


def _chosen_figures(run: RunFigures, standing: _Standing, rows: list[PrecisionOutcome]) -> list[str]:
    """The chosen precision's figures for the sentence: size, ratio to FP32, decode, first token, checks passed."""
    choice, unsure = standing.choice, standing.unsure
    best = next(r for r in rows if r.precision == choice)
    first = run.first_token.get(choice)
    return [f"{run.sizes[choice]:.1f} MB" if choice in run.sizes else "",
            f"{best.figures.x_fp32:.2f}x FP32" if isinstance(best.figures.x_fp32, int | float) else "",
            f"{_decode(run, choice):.0f} tok/s" if _decode(run, choice) else "",
            f"first token {first.ttft_ms:.0f} ms at {first.target_prompt_tokens} prompt tokens"
            if first is not None and first.ttft_ms else "",
            f"passes all {sum(1 for q, _, _ in run.verdicts if q == choice)} checks"
            if not unsure.get(choice) and not standing.shared and not standing.below.get(choice)
            else f"passes {sum(1 for (q, _, _), v in run.verdicts.items() if q == choice and v == 'pass')} "
                 f"of {sum(1 for q, _, _ in run.verdicts if q == choice)} checks"
                 + (f", {len(unsure[choice])} inconclusive" if unsure.get(choice) else "")]


def _deploy_sentence(run: RunFigures, standing: _Standing, rows: list[PrecisionOutcome]) -> str:
    """"Deploy ..." with the chosen precision's figures, the model's own misses, why each other lost, slow starts."""
    choice = standing.choice
    deployed = run.int4_recipe or run.params.get("int4_recipe")
    recipe = f", INT4 recipe {deployed}" if choice == "int4" and deployed else ""
    figures = _chosen_figures(run, standing, rows)
    others = [f"{r.precision} {r.verdict}" for r in rows if r.precision != choice]
    slow = [text for p in standing.checked
            if (text := _slow_start(run, p)) and run.sizes.get(p, 0) < run.sizes.get("fp32", 0)]
    inherited = [f"{check}/{case}" for check, case in standing.shared if run.verdicts.get((choice, check, case)) == "fail"]
    return (f"Deploy {choice} ({', '.join(f for f in figures if f)}{recipe})."
            + (f" Every build, FP32 included, fails {', '.join(inherited)}: the model's own miss, not a "
               "loss of precision." if inherited else "")
            + (" " + "; ".join(others) + "." if others else "")
            + (" " + "; ".join(slow) + "." if slow else ""))


def recommend(run: RunFigures) -> Recommendation:
    """The smallest precision of ``run`` that loses no checklist item FP32 passes and is not slow to answer.

    Read from the run's own test.json and bench.json (through :func:`load_run`), so it agrees
    with them by construction. The case families (:data:`~slmops.toolkit.domain.verdicts.CASE_FAMILIES`:
    domain, held-out, format, tool calls, retention ...) are judged against FP32, the reference, by a
    paired test over their cases (:func:`~slmops.toolkit.domain.verdicts.family_comparisons`,
    McNemar's exact test): a precision loses a family only when the test tells it from chance
    (p < 0.05), so a one- or two-case difference decides nothing and FP32 never loses one; the
    sentence names the test and its p-values. When FP32 was not asked a family's cases, they
    count one by one as every other check does. A precision that failed any other check loses, unless every precision
    that ran the check failed it, FP32 among them and at least two in all: such a miss belongs
    to the model (a fine-tune that never learned a paraphrase), not to a precision, so it
    disqualifies none and the sentence names it. Among the rest, a
    typical request (first token at about :data:`TYPICAL_PROMPT` prompt tokens, then the
    benchmark's generated tokens at its decode speed) weighs first-token time and decode
    together: the smallest precision within :data:`LATENCY_SLACK` of the fastest passing one's
    is chosen; a smaller one slower than that loses on speed, a larger one on size. An
    inconclusive check is not a failure; the verdict says to rerun it. When a smaller precision
    starts slower than FP32, the sentence says so and whether the CPU's instruction set is why.

    Example:
        >>> recommend(load_run("outputs/demo")).sentence
        'Deploy int8 (157.3 MB, 0.29x FP32, 133 tok/s, first token 120 ms, passes all 26 checks). fp32 lost: ...'
    """
    standing = _standing(run)
    rows, reasons = _rows(run, standing)
    paired = [c for cs in standing.comparisons.values() for c in cs]
    if standing.choice is None:
        return Recommendation(None, "Nothing to deploy: every precision failed a check ("
                              + "; ".join(f"{r.precision} {r.verdict}" for r in rows) + ")."
                              + _paired_words(standing.comparisons, standing.below), rows, reasons, paired)
    sentence = _deploy_sentence(run, standing, rows)
    return Recommendation(standing.choice, sentence + _paired_words(standing.comparisons, standing.below), rows,
                          reasons, paired)


def _paired_words(comparisons: dict[str, list[PairedComparison]], below: dict[str, list[str]]) -> str:
    """The paired tests behind the recommendation, in words: each family where builds answered differently.

    Families where every case went the same way in both builds are summed up, not listed.
    """
    if not comparisons:
        return ""
    differing = [c for cs in comparisons.values() for c in cs if c.reference_only or c.candidate_only]
    families = sorted({c.family for cs in comparisons.values() for c in cs})
    text = (f" Each precision against fp32 per case family ({', '.join(families)}), by {PAIRED_TEST} on the cases "
            "one passes and the other fails: ")
    text += ("; ".join(c.words() for c in differing) if differing else "every case went the same way in both")
    short = [f"{p} {', '.join(families)}" for p, families in below.items() if families]
    if short:
        text += (". Below a family's pass-rate target (a model's own miss unless the test says worse than fp32): "
                 + "; ".join(short))
    return text + "."


#: How a timing of a run measured once is judged: not at all (set ``repeats`` to 2 or more).
NOT_JUDGED = "not judged: one repeat measures no spread"


def judge_timing(figure: str, row_a: BenchRow, row_b: BenchRow) -> TimingJudgement:
    """One timing figure of two runs (a :class:`BenchRow` field), judged against both runs' spread (2 sd of the difference).

    The spread is the figure's ``<figure>_sd`` field (0 where the row has none).
    """
    a, b = getattr(row_a, figure), getattr(row_b, figure)
    noise = 2 * math.hypot(getattr(row_a, f"{figure}_sd", 0.0), getattr(row_b, f"{figure}_sd", 0.0))
    higher_is_better = figure == "decode_tps"
    if 1 in (row_a.repeats, row_b.repeats):
        judged = NOT_JUDGED  # one repeat has no spread: any difference would be called beyond a noise of 0
    elif row_a.noisy or row_b.noisy:
        judged = "a run is too noisy to judge (CV over 10%)"
    elif abs(b - a) <= noise:
        judged = "same, within noise"
    else:
        judged = "faster" if (b > a) == higher_is_better else "slower"
    return TimingJudgement(figure, a, b, round(100 * (b - a) / a, 1) if a else NOT_MEASURED, round(noise, 2), judged)
