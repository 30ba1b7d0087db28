"""Quality against the FP32 build (top-1 agreement, KL divergence, perplexity) and the negative control."""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import replace
from pathlib import Path

from slmops.toolkit.core import artifacts, build_cache, codec
from slmops.toolkit.core.measure import timestamp
from slmops.toolkit.domain import tools
from slmops.toolkit.domain.datasets import HELDOUT, RETENTION, domain_terms
from slmops.toolkit.domain.results.checklist import (
    Bound,
    Check,
    CheckResult,
    ControlResult,
    QualityRecord,
    Thresholds,
    Unit,
    verdict_of,
)
from slmops.toolkit.domain.results.registration import REGISTRATION_RECORD
from slmops.toolkit.domain.run_params import DEFAULTS
from slmops.toolkit.domain.sources import fingerprint
from slmops.toolkit.runtimes import foundry, genai
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_session import find_model
from slmops.toolkit.stages.checklist.answers import generation
from slmops.toolkit.stages.checklist.cases import CONTENT_RULES, judge
from slmops.toolkit.stages.checklist.tool_calls import ask_tool_case, is_tool_case

#: The code that decides a control's answers: this module and those of the answers, the case rules and the tool
#: calls (named by a function of each, as importing the modules by name from the package would import the package
#: that imports this module; taken once, at import, so a function patched later does not change the key).
_ASKING = (sys.modules[__name__], *(sys.modules[f.__module__] for f in (generation, judge, ask_tool_case)))

#: Largest share of the domain cases the base model (not fine-tuned) may pass before the cases count as testing nothing.
CONTROL_MAX_PASS = 0.1


def quality_records(names: list[str], reference: str, cache: str | Path | None) -> dict[str, QualityRecord]:
    """Top-1 agreement, KL divergence and perplexity of every model against the reference, its logits read once.

    Example:
        >>> quality_records(["smollm2-int4"], "smollm2-fp32", None)["smollm2-int4"].top1_agreement
        0.6659
    """
    ref_dir = Path(find_model(reference, cache).get_path())
    found = genai.agreement(ref_dir, {n: Path(find_model(n, cache).get_path()) for n in names})
    return {a.model: QualityRecord(reference, a.top1_agreement, a.kl_divergence, a.perplexity, a.reference_perplexity, a.tokens)
            for a in found}


def quality_checks(name: str, record: QualityRecord, limits: Thresholds) -> list[CheckResult]:
    """The quality checks of one model from its :class:`QualityRecord`: top-1 agreement and KL divergence.

    Both measure the distance to the FP32 reference itself. Perplexity on the generic reference text
    is not a check, only information in the KL check's detail: a fine-tune moves it away from the
    base's (the Gemma 3 fine-tune's FP32 reads 183), so a quantized build that keeps the fine-tune can
    read several times its FP32's (Gemma's INT4: 2.7x at KL 0.45, every domain answer kept) while one
    that rounds the fine-tune back toward the base reads lower.

    Example:
        >>> [c.case for c in quality_checks("m", QualityRecord("ref", 0.9, 0.1, 11.0, 10.0, 300), Thresholds())]
        ['top1-agreement', 'kl-divergence']
    """
    text = f"on the bundled text ({record.tokens} tokens) against {record.reference}"
    return [
        CheckResult(name, Check.QUALITY, "top1-agreement", record.top1_agreement, Unit.SHARE, limits.top1_min,
                    Bound.AT_LEAST, verdict_of(record.top1_agreement >= limits.top1_min),
                    f">= {limits.top1_min} {text}", samples=record.tokens),
        CheckResult(name, Check.QUALITY, "kl-divergence", record.kl_divergence, Unit.NATS, limits.kl_max,
                    Bound.AT_MOST, verdict_of(record.kl_divergence <= limits.kl_max),
                    f"<= {limits.kl_max} nats {text}",
                    f"perplexity {record.perplexity:.2f}, {record.perplexity_ratio:.2f}x the reference's "
                    f"{record.reference_perplexity:.2f} (information only)", samples=record.tokens),
    ]


def run_control(name: str, cases: list[dict], *, cache: str | Path | None = None, seed: int = DEFAULTS.seed,
                max_tokens: int = 48, progress: bool = True, keep: bool = False) -> ControlResult:
    """A negative control: the base model (not fine-tuned) answers the same domain and held-out cases.

    If the base passes them, they test nothing about the fine-tune, and the verdict says so. The
    ``retention`` cases (general questions) it answers correctly become the reference every build
    is held to (``retention_correct``; :func:`~slmops.toolkit.domain.retention.with_retention`). The
    base gets the same answer budget as the checked models (``max_tokens``, the checklist's 48):
    the control asks whether the same question, judged the same way, is answered without the
    fine-tune (128 tokens cost the base 2.7x the time and only gave it more words to match by chance).

    With ``keep``, the result is kept in the build cache by everything that decides the answers
    (:func:`control_key`: the registered folder's files, its search settings and thread count
    included, the cases, the budget, the seed, the runtime's version and the code that asks and
    judges), and a later control with the same key is read back (``kept_from`` says when it was
    asked): decoding is greedy, so asking again gives the same answers (about a minute for the
    demo's base).

    Example:
        >>> run_control("smollm2-base-fp32", load_cases()).tests_the_fine_tune
        True
    """
    from tqdm.auto import tqdm

    content = [c for c in cases if not is_tool_case(c) and any(rule in c["expect"] for rule in CONTENT_RULES)]
    # The trained questions that expect a call: a base that never calls passes the others, and their held-out
    # paraphrases would only double the cost of a base that runs each to the token budget.
    tool_cases = [c for c in cases if is_tool_case(c) and "call" in c["expect"] and c.get("group") != HELDOUT]
    if not content:
        return ControlResult(name, 0, 0, 0, 0, 0.0, CONTROL_MAX_PASS, None)
    passed: dict[str, list[bool]] = {"trained": [], HELDOUT: [], RETENTION: []}
    retained: list[str] = []  # the general questions the base answers correctly: what every build is held to
    answers = {}
    with LoadedModel(name, cache) as model:
        key = control_key(Path(model.model.get_path()), content + tool_cases, max_tokens, seed) if keep else ""
        kept = build_cache.lookup(_KEPT, key) if keep else None
        if kept is not None and (kept / _RESULT).is_file():
            return replace(codec.load(ControlResult, artifacts.read_json(kept / _RESULT)), model=name)
        for case in tqdm(content, desc=f"{name}: control", unit="case", disable=not progress):
            answers[case["id"]] = generation(model, case, max_tokens, seed)[0]
            correct = judge(answers[case["id"]], case["expect"], CONTENT_RULES)[0]
            passed[case.get("group") if case.get("group") in (HELDOUT, RETENTION) else "trained"].append(correct)
            if correct and case.get("group") == RETENTION:
                retained.append(case["id"])
        # The base on the cases that expect a call (asked with its tools when the base has markers; else it cannot call).
        tools_passed = 0
        for case in tqdm(tool_cases, desc=f"{name}: control tool calls", unit="case",
                         disable=not progress or not tool_cases):  # no empty bar when no case calls
            result = ask_tool_case(model, case) if model.markers is not None or not case.get("tools") else None
            tools_passed += bool(result and result.passed)
            answers[case["id"]] = result.text if result and not result.calls else (
                f"[tool call] {result.calls[0]['function']['name']}" if result else "(no tool-call markers)")
    rate = sum(passed["trained"]) / len(passed["trained"]) if passed["trained"] else 0.0
    result = ControlResult(name, sum(passed["trained"]), len(passed["trained"]), sum(passed[HELDOUT]),
                           len(passed[HELDOUT]), round(rate, 3), CONTROL_MAX_PASS, rate <= CONTROL_MAX_PASS, answers,
                           tools_passed, len(tool_cases), retention_correct=retained,
                           retention_total=len(passed[RETENTION]), domain_terms=domain_terms(cases))
    if keep:
        build_cache.store_json(_KEPT, key, _RESULT, codec.dump(replace(result, kept_from=timestamp())))
    return result


#: The build cache's kind for kept negative controls, and the file an entry holds.
_KEPT, _RESULT = "control-answers", "control.json"


def control_key(folder: Path, cases: list[dict], max_tokens: int, seed: int) -> str:
    """What decides a negative control's answers: the registered model's files, the cases, budget, seed and code.

    The model's files are all but its records (the build's manifest and the registration's), which
    hold times and paths that differ between two registrations of the same build.
    """
    code = build_cache.code_fingerprint(*_ASKING, foundry, tools)
    files = fingerprint(folder, ignore=(artifacts.MANIFEST, REGISTRATION_RECORD))
    return build_cache.key_of(files, cases, max_tokens, seed, code, importlib.metadata.version("foundry-local-sdk"))
