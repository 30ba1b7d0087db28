"""Stage 3: the tutorial's quality checklist as checks with thresholds and verdicts.

A cases file is JSONL, one case per line: ``id``, ``messages`` (a chat), and ``expect``
with any of ``contains_any`` (list), ``not_contains`` (list), ``regex``, ``max_chars``.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from toolkit.errors import SlmopsError

BUNDLED_CASES = "smollm2_cases.jsonl"


@dataclass(frozen=True)
class CheckResult:
    """One check of the checklist.

    Attributes:
        model: Registered model name.
        check: Checklist item (``domain``, ``format``, ``edge``).
        case: Case id.
        threshold: What passing means, in words.
        value: What was measured (e.g. the answer, or an error).
        passed: The verdict.
    """

    model: str
    check: str
    case: str
    threshold: str
    value: str
    passed: bool


def load_cases(path: str | os.PathLike[str] | None = None) -> list[dict]:
    """Read a JSONL cases file (the bundled SmolLM2 cases when ``path`` is None).

    Raises:
        SlmopsError: the file is missing or a line is not a valid case.
    """
    if path is None:
        text = resources.files("toolkit.data").joinpath(BUNDLED_CASES).read_text()
        source = BUNDLED_CASES
    else:
        file = Path(path)
        if not file.is_file():
            raise SlmopsError(f"No cases file at {file}; pass --cases FILE.jsonl (one JSON case per line).")
        text, source = file.read_text(), str(file)
    cases = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            assert isinstance(case["messages"], list) and case["messages"]
            assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                       for m in case["messages"])
        except (json.JSONDecodeError, KeyError, AssertionError, TypeError) as exc:
            raise SlmopsError(
                f"{source}:{number} is not a valid case: it needs 'messages', a list of "
                "{'role': system|user|assistant, 'content': str}."
            ) from exc
        case.setdefault("id", f"case-{number}")
        case.setdefault("expect", {})
        cases.append(case)
    return cases


def judge(answer: str, expect: dict) -> tuple[bool, str]:
    """Apply a case's expectations to an answer; return (passed, threshold in words).

    Example:
        >>> judge("Paris.", {"contains_any": ["Paris"]})
        (True, 'contains any of [Paris]')
    """
    rules, passed = [], True
    if "contains_any" in expect:
        rules.append(f"contains any of [{', '.join(expect['contains_any'])}]")
        passed &= any(word.lower() in answer.lower() for word in expect["contains_any"])
    if "not_contains" in expect:
        rules.append(f"contains none of [{', '.join(expect['not_contains'])}]")
        passed &= not any(word in answer for word in expect["not_contains"])
    if "regex" in expect:
        rules.append(f"matches /{expect['regex']}/")
        passed &= re.search(expect["regex"], answer) is not None
    if "max_chars" in expect:
        rules.append(f"at most {expect['max_chars']} characters")
        passed &= len(answer) <= int(expect["max_chars"])
    return bool(passed), "; ".join(rules) or "answers"


EDGE_CASES = [
    ("empty-prompt", [{"role": "user", "content": ""}]),
    ("whitespace-prompt", [{"role": "user", "content": "   \n\t "}]),
]


def run_checklist(
    name: str, *, cases: list[dict] | None = None, cache: str | Path | None = None, max_tokens: int = 48,
    seed: int = 0,
) -> list[CheckResult]:
    """Run the domain cases and the edge cases against a registered model (greedy).

    Example:
        >>> all(r.passed for r in run_checklist("smollm2-int4"))
        True
    """
    from tqdm.auto import tqdm

    from toolkit.foundry import LoadedModel

    cases = cases if cases is not None else load_cases()
    results: list[CheckResult] = []
    with LoadedModel(name, cache) as model:
        for case in tqdm(cases, desc=f"test {name}", unit="case"):
            answer = model.generate(case["messages"], max_tokens=max_tokens, seed=seed).text
            passed, threshold = judge(answer, case["expect"])
            check = "format" if set(case["expect"]) <= {"regex", "max_chars", "not_contains"} else "domain"
            results.append(CheckResult(name, check, case["id"], threshold, answer.strip()[:300], passed))
        for case_id, messages in EDGE_CASES:
            start = time.perf_counter()
            try:
                generation = model.generate(messages, max_tokens=8, seed=seed)
                value, passed = f"answered ({generation.completion_tokens} tokens)", True
            except SlmopsError as exc:
                value, passed = f"clear error: {exc}", True
            except Exception as exc:  # the runtime's own error: not a crash, but say what it was
                value, passed = f"runtime error: {type(exc).__name__}: {exc}", True
            value += f" in {time.perf_counter() - start:.2f} s"
            results.append(CheckResult(name, "edge", case_id, "answers or raises a clear error; no crash",
                                       value, passed))
    return results


def write_report(results: list[CheckResult], path: str | os.PathLike[str]) -> dict:
    """Write ``test.json`` (summary plus every check) and return its content."""
    models = sorted({r.model for r in results})
    report = {
        "passed": all(r.passed for r in results),
        "summary": {m: {"passed": sum(r.passed for r in results if r.model == m),
                        "total": sum(r.model == m for r in results)} for m in models},
        "checks": [asdict(r) for r in results],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


REFERENCE_TEXT = "reference_text.txt"


@dataclass(frozen=True)
class Agreement:
    """How closely a quantized build follows its FP32 reference on one text.

    Measured teacher-forced (both models read the same tokens), like llama.cpp's
    ``perplexity --kl-divergence``: at every position, does the greedy (top-1) next token
    match, how far apart are the distributions, and how well does each predict the text.

    Attributes:
        model: Candidate model folder (or a label).
        tokens: Positions compared.
        top1: Share of positions where the greedy next token is the reference's.
        kl: Mean KL divergence reference || candidate, in nats.
        perplexity: Candidate's perplexity on the text.
        reference_perplexity: The FP32 reference's perplexity on the same text.
    """

    model: str
    tokens: int
    top1: float
    kl: float
    perplexity: float
    reference_perplexity: float


def reference_text() -> str:
    """The bundled English text (about 430 SmolLM2 tokens) used for agreement checks."""
    return resources.files("toolkit.data").joinpath(REFERENCE_TEXT).read_text()


def compare_to_reference(reference_dir: str | os.PathLike[str], candidates: dict[str, str | os.PathLike[str]],
                         text: str | None = None) -> list[Agreement]:
    """Top-1 agreement, KL divergence and perplexity of each candidate against the FP32 reference.

    Runs ONNX Runtime GenAI in a child process (see :mod:`toolkit.genai`).

    Args:
        reference_dir: The FP32 build (an ONNX model folder).
        candidates: Label to ONNX model folder.
        text: Text to read; the bundled :func:`reference_text` by default.

    Example:
        >>> compare_to_reference("models/fp32", {"int4": "models/int4"})[0].top1
        0.6659
    """
    import tempfile

    from toolkit import genai

    with tempfile.TemporaryDirectory(prefix="slmops-text-") as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text or reference_text())
        rows = genai.run("compare", str(Path(reference_dir).resolve()),
                         *(f"{label}={Path(folder).resolve()}" for label, folder in candidates.items()),
                         "--text-file", str(text_file))
    return [Agreement(**row) for row in rows]
