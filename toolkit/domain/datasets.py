"""Fine-tuning datasets: JSONL instruction pairs, and the checklist cases they give.

One example per line: ``question`` and ``answer`` (the training pair), ``paraphrase`` (a
held-out wording of the same question, never trained on), ``expect`` (words a correct
answer contains), an optional ``id`` and ``format: "json"`` (the answer is a JSON object, a
format the fine-tune must keep). The bundled set is about Veloria, a fictional country no
base model can know, so a base that passes its cases shows the cases test nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from toolkit.core import artifacts
from toolkit.core.errors import InputError

BUNDLED_DATASET = "veloria.jsonl"
#: The group of held-out cases (paraphrases): scored apart from the trained questions.
HELDOUT = "heldout"


@dataclass(frozen=True)
class Example:
    """One line of a fine-tuning dataset (see the module docstring)."""

    id: str
    question: str
    answer: str
    paraphrase: str
    expect: tuple[str, ...]
    format: str = ""



def load_dataset(path: str | os.PathLike[str] | None = None) -> list[Example]:
    """Read a JSONL fine-tuning dataset (the bundled Veloria set when ``path`` is None).

    Raises:
        InputError: missing file, not UTF-8, no examples, or a line that is not a valid example
            (the message names the line and what an example needs).
    """
    if path is None:
        text, source = resources.files("toolkit.domain.data").joinpath(BUNDLED_DATASET).read_text(), BUNDLED_DATASET
    else:
        file = Path(path)
        if not file.is_file():
            raise InputError(f"No dataset at {file}; pass a JSONL file, one example per line.")
        text, source = artifacts.read_text(file), str(file)
    examples, seen = [], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("an example is a JSON object")
            for key in ("question", "answer", "paraphrase"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{key!r} must be a non-empty string")
            expect = row.get("expect")
            if not isinstance(expect, list) or not expect or not all(isinstance(w, str) and w for w in expect):
                raise ValueError("'expect' must be a non-empty list of words a correct answer contains")
            if row.get("format", "") not in ("", "json"):
                raise ValueError("'format' is 'json' or absent")
            if row.get("format") == "json":
                json.loads(row["answer"])
            example = Example(str(row.get("id") or f"example-{number}"), row["question"], row["answer"],
                              row["paraphrase"], tuple(expect), row.get("format", ""))
        except ValueError as exc:  # JSONDecodeError included
            raise InputError(f"{source}:{number} is not a valid example ({exc}): it needs 'question', 'answer', "
                             "'paraphrase' and 'expect' (a list of words), optionally 'id' and 'format': 'json'.") \
                from exc
        if example.id in seen:
            raise InputError(f"{source}:{number}: the id {example.id!r} is used twice; ids must be unique.")
        seen.add(example.id)
        examples.append(example)
    if not examples:
        raise InputError(f"{source} holds no examples; write one JSON example per line.")
    return examples


def cases(examples: list[Example]) -> dict[str, list[dict]]:
    """Checklist cases from a dataset: the training questions and the held-out paraphrases, apart.

    Each case expects one of the example's words; a ``format: json`` example also expects a
    JSON object with an ``answer`` field (a format case).

    Returns:
        ``{"trained": [...], "heldout": [...]}``, cases in the checklist's JSONL shape (held-out
        ones carry ``"group": "heldout"``).
    """
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    out: dict[str, list[dict]] = {"trained": [], "heldout": []}
    for example in examples:
        for kind, question in (("trained", example.question), (HELDOUT, example.paraphrase)):
            expect: dict = {"contains_any": list(example.expect)}
            if example.format == "json":
                expect["json_schema"] = schema
            case = {"id": f"{kind}-{example.id}", "messages": [{"role": "user", "content": question}],
                    "expect": expect}
            out[kind].append({**case, "group": HELDOUT} if kind == HELDOUT else case)
    return out


def write_cases(examples: list[Example], path: str | os.PathLike[str]) -> Path:
    """Write :func:`cases` (trained, then held-out) as a checklist cases file (JSONL)."""
    split = cases(examples)
    lines = [json.dumps(case, ensure_ascii=False) for case in split["trained"] + split[HELDOUT]]
    return artifacts.write_text(Path(path), "\n".join(lines) + "\n")
