"""Runs side by side: what a rerun, a new fine-tune or a new release changed.

One implementation for both pages that put runs together: :func:`side_by_side` is the
per-precision table of any number of runs (a sweep's page, and the top of a comparison), and
:func:`compare_runs` adds what only two runs have: parameters, inputs and versions that
differ, and every figure and verdict with its delta. Timing deltas are judged against the
runs' own measured spread: a change inside the noise is labelled so, never as a regression.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit.core import artifacts
from toolkit.core.artifacts import read_json
from toolkit.domain.provenance import differences, machine_differences
from toolkit.presentation.render import render_page
from toolkit.stages import bench

#: Quality figures a comparison gates on, and how far each may move the wrong way by default:
#: top-1 agreement may drop and KL divergence rise by that much (absolute), perplexity rise by
#: that share (relative).
FAIL_ON = {"top1": 0.02, "kl": 0.05, "perplexity": 0.05}

_QUALITY_CASES = {"top1-agreement": "top1", "kl-divergence": "kl", "perplexity": "perplexity"}
_IGNORED_PARAMS = {"run_dir", "interactive"}


def _precision(model: str) -> str:
    """Registered names are PREFIX-PRECISION; runs with other prefixes still line up by precision."""
    return model.rsplit("-", 1)[-1]


def _number(text: object) -> float | None:
    try:
        return float(str(text).split()[0])
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True)
class RunFigures:
    """What one run folder holds, by precision.

    Attributes:
        name: The run folder's name.
        params: Its ``params.json``.
        record: Its ``run.json`` (inputs' fingerprints, seed, versions, machine).
        sizes: Size on disk in MB.
        size_ratios: Size over the FP32 build's (measured, or estimated when FP32 was not built).
        quality: ``top1``, ``kl`` and ``perplexity`` against the FP32 build.
        verdicts: ``(precision, check, case)`` to passed.
        timings: ``(precision, engine, prompt tokens, generated tokens, threads)`` to the bench row.
        headline: The benchmark's headline row per precision (Foundry Local, shortest prompt).
    """

    name: str
    params: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    size_ratios: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    headline: dict = field(default_factory=dict)


def load_run(run_dir: str | os.PathLike[str]) -> RunFigures:
    """Read a run folder's result files (any that are missing are simply empty)."""
    run = Path(run_dir)
    manifests = [m for m in read_json(run / "models" / "convert.json", []) or []
                 if isinstance(m, dict) and "precision" in m]
    sizes = {m["precision"]: m["size_mb"] for m in manifests}
    ratios = {m["precision"]: m.get("size_ratio_vs_fp32") for m in manifests}
    quality: dict[str, dict] = {}
    verdicts = {}
    for check in (read_json(run / "test.json", {}) or {}).get("checks", []):
        precision = _precision(check["model"])
        verdicts[(precision, check["check"], check["case"])] = bool(check["passed"])
        if check["check"] == "quality" and check["case"] in _QUALITY_CASES:
            quality.setdefault(precision, {})[_QUALITY_CASES[check["case"]]] = _number(check["value"])
    report = read_json(run / "bench.json", {}) or {}
    rows = report.get("rows", []) if isinstance(report, dict) else []
    timings = {(row["precision"], row["engine"], row["target_prompt_tokens"], row["target_gen_tokens"],
                row["threads"]): row for row in rows}
    headline = {row["precision"]: row for row in bench.headline_rows(rows)}
    return RunFigures(run.name, read_json(run / "params.json", {}) or {}, read_json(run / "run.json", {}) or {},
                      sizes, ratios, quality, verdicts, timings, headline)


def side_by_side(runs: list[tuple[str, RunFigures]]) -> list[dict]:
    """One row per run and precision: size, checks passed, top-1 agreement, decode, TTFT, peak RSS.

    The sweep page shows it for every run of a sweep; a comparison for its two runs.
    """
    rows = []
    for label, run in runs:
        precisions = list(dict.fromkeys([*run.sizes, *(p for p, _, _ in run.verdicts)]))
        for precision in precisions or ["–"]:
            checks = [passed for (p, _, _), passed in run.verdicts.items() if p == precision]
            head = run.headline.get(precision, {})
            rows.append({
                "run": label, "precision": precision, "size_mb": run.sizes.get(precision, "–"),
                "x_fp32": run.size_ratios.get(precision) or "–",
                "checks_passed": f"{sum(checks)}/{len(checks)}" if checks else "–",
                "top1_vs_fp32": run.quality.get(precision, {}).get("top1", "–"),
                "decode_tps": head.get("decode_tps", "–"), "ttft_ms": head.get("ttft_ms", "–"),
                "peak_rss_mb": head.get("peak_rss_mb", "–"),
            })
    return rows


@dataclass(frozen=True)
class Recommendation:
    """The precision to deploy from one run, its figures beside the alternatives', and why each lost.

    Attributes:
        choice: The recommended precision (None when every precision failed a check).
        sentence: The decision in one line.
        rows: One per precision: its figures and ``verdict`` (recommended, or why it lost).
    """

    choice: str | None
    sentence: str
    rows: list[dict]


def recommend(run: RunFigures) -> Recommendation:
    """The smallest, then fastest, precision of ``run`` that passes every checklist item.

    Read from the run's own test.json and bench.json (through :func:`load_run`), so it agrees
    with them by construction. Another precision loses on a failed check, else on size, else
    on speed.

    Example:
        >>> recommend(load_run("outputs/demo")).sentence
        'Deploy int8 (157.3 MB, 0.29x FP32, 133 tok/s, passes all 26 checks). fp32 lost: larger (543.9 MB against ...'
    """
    def decode(p: str) -> float:
        value = run.headline.get(p, {}).get("decode_tps")
        return value if isinstance(value, int | float) else 0.0

    checked = list(dict.fromkeys(p for p, _, _ in run.verdicts))
    failed = {p: [f"{check}/{case}" for (q, check, case), ok in run.verdicts.items() if q == p and not ok]
              for p in checked}
    passing = sorted((p for p in checked if not failed[p]), key=lambda p: (run.sizes.get(p, math.inf), -decode(p)))
    choice = passing[0] if passing else None
    rows = []
    for row in side_by_side([("", run)]):
        p = row.pop("precision")
        del row["run"]
        if p == choice:
            verdict = "recommended"
        elif failed.get(p):
            verdict = "lost: failed " + ", ".join(failed[p][:3]) + (" ..." if len(failed[p]) > 3 else "")
            structured = [ok for (q, check, _), ok in run.verdicts.items() if q == p and check == "structured"]
            if structured and all(ok for ok in structured) and all(f.startswith("format/") for f in failed[p]):
                verdict += " (passes with response_format: deployable where the application asks for structured output)"
        elif p not in failed:
            verdict = "not checked"
        elif run.sizes.get(p, math.inf) > run.sizes.get(choice, math.inf):
            verdict = f"lost: larger ({run.sizes[p]:.1f} MB against {run.sizes[choice]:.1f})"
        else:
            verdict = f"lost: slower ({decode(p):.0f} tok/s against {decode(choice):.0f})"
        rows.append({"precision": p, **row, "verdict": verdict})
    if choice is None:
        return Recommendation(None, "Nothing to deploy: every precision failed a check ("
                              + "; ".join(f"{r['precision']} {r['verdict']}" for r in rows) + ").", rows)
    recipe = f", INT4 recipe {run.params['int4_recipe']}" if choice == "int4" and run.params.get("int4_recipe") else ""
    best = next(r for r in rows if r["precision"] == choice)
    figures = [f"{run.sizes[choice]:.1f} MB" if choice in run.sizes else "",
               f"{best['x_fp32']:.2f}x FP32" if isinstance(best["x_fp32"], int | float) else "",
               f"{decode(choice):.0f} tok/s" if decode(choice) else "",
               f"passes all {sum(1 for q, _, _ in run.verdicts if q == choice)} checks"]
    others = [f"{r['precision']} {r['verdict']}" for r in rows if r["precision"] != choice]
    sentence = f"Deploy {choice} ({', '.join(f for f in figures if f)}{recipe})." + (
        " " + "; ".join(others) + "." if others else "")
    return Recommendation(choice, sentence, rows)


@dataclass(frozen=True)
class Comparison:
    """Two runs compared; :attr:`regressions` is what makes ``slmops compare`` exit 1."""

    a: str
    b: str
    params: list[dict]
    inputs: list[str]
    machine: list[str]
    summary: list[dict]
    sizes: list[dict]
    quality: list[dict]
    verdicts: list[dict]
    timings: list[dict]
    regressions: list[str]
    recommendations: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No verdict got worse and no quality figure moved past its threshold."""
        return not self.regressions


def _delta(a: float | None, b: float | None) -> float | str:
    return round(b - a, 4) if a is not None and b is not None else "–"


def _timing(figure: str, row_a: dict, row_b: dict) -> dict:
    """One timing figure of two runs, judged against both runs' spread (2 sd of the difference)."""
    a, b = row_a[figure], row_b[figure]
    noise = 2 * math.hypot(row_a.get(f"{figure}_sd", 0.0), row_b.get(f"{figure}_sd", 0.0))
    higher_is_better = figure == "decode_tps"
    if row_a.get("noisy") or row_b.get("noisy"):
        judged = "a run is too noisy to judge (CV over 10%)"
    elif abs(b - a) <= noise:
        judged = "same, within noise"
    else:
        judged = "faster" if (b > a) == higher_is_better else "slower"
    return {"figure": figure, "a": a, "b": b, "change_pct": round(100 * (b - a) / a, 1) if a else "–",
            "noise": round(noise, 2), "judged": judged}


def compare_runs(a: RunFigures, b: RunFigures, fail_on: dict[str, float] | None = None) -> Comparison:
    """Compare run ``b`` with run ``a`` (the baseline).

    Args:
        fail_on: Thresholds of :data:`FAIL_ON` to override.

    Example:
        >>> compare_runs(load_run("outputs/demo"), load_run("outputs/again")).regressions
        []
    """
    limits = {**FAIL_ON, **(fail_on or {})}
    regressions: list[str] = []
    params = [{"parameter": k, "a": a.params.get(k, "absent"), "b": b.params.get(k, "absent")}
              for k in sorted((set(a.params) | set(b.params)) - _IGNORED_PARAMS) if a.params.get(k) != b.params.get(k)]
    sizes = [{"precision": p, "a": a.sizes.get(p), "b": b.sizes.get(p), "delta": _delta(a.sizes.get(p), b.sizes.get(p))}
             for p in dict.fromkeys([*a.sizes, *b.sizes])]
    quality = []
    for p in dict.fromkeys([*a.quality, *b.quality]):
        for figure, limit in limits.items():
            old, new = a.quality.get(p, {}).get(figure), b.quality.get(p, {}).get(figure)
            moved = ""
            if old is not None and new is not None:
                worse = {"top1": old - new, "kl": new - old, "perplexity": (new - old) / old if old else 0.0}[figure]
                if worse > limit:
                    moved = f"worse by more than {limit}" + (" (relative)" if figure == "perplexity" else "")
                    regressions.append(f"{p} {figure}: {old} -> {new} ({moved})")
            quality.append({"precision": p, "figure": figure, "a": old, "b": new, "delta": _delta(old, new),
                            "judged": moved or "within threshold"})
    verdicts = []
    for key in dict.fromkeys([*a.verdicts, *b.verdicts]):
        old, new = a.verdicts.get(key), b.verdicts.get(key)
        change = ("same" if old == new else "worse" if old and new is False else "better" if old is False and new
                  else f"only in {'a' if new is None else 'b'}")
        if change == "worse":
            regressions.append(f"{key[0]} {key[1]}/{key[2]}: passed in {a.name}, fails in {b.name}")
        verdicts.append({"precision": key[0], "check": key[1], "case": key[2],
                         "a": {True: "pass", False: "FAIL", None: "–"}[old],
                         "b": {True: "pass", False: "FAIL", None: "–"}[new], "change": change})
    order = {"worse": 0, "better": 1, "only in a": 2, "only in b": 2, "same": 3}
    verdicts.sort(key=lambda row: order[row["change"]])
    timings = [{"precision": key[0], "engine": key[1], "prompt": key[2], "gen": key[3], "threads": key[4],
                **_timing(figure, a.timings[key], b.timings[key])}
               for key in a.timings if key in b.timings for figure in ("decode_tps", "ttft_ms")]
    return Comparison(a.name, b.name, params, differences(a.record, b.record) if a.record and b.record else [],
                      machine_differences(a.record, b.record), side_by_side([("a: " + a.name, a), ("b: " + b.name, b)]),
                      sizes, quality, verdicts, timings, regressions,
                      {a.name: recommend(a).sentence, b.name: recommend(b).sentence})


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``compare.json`` and ``compare.html`` into ``out_dir``; return the page."""
    out = Path(out_dir)
    artifacts.write_json(out / "compare.json", {**asdict(comparison), "passed": comparison.passed})
    return artifacts.write_text(out / "compare.html", render_page("compare.html.j2", c=comparison))
