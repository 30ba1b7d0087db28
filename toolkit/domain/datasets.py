"""Fine-tuning datasets: JSONL instruction pairs, and the checklist cases they give.

One example per line: ``question`` and ``answer`` (the training pair), ``paraphrase`` (a
held-out wording of the same question, never trained on), ``expect`` (words a correct
answer contains), an optional ``id`` and ``format: "json"`` (the answer is a JSON object, a
format the fine-tune must keep).

A tool example adds ``tools`` (OpenAI tool definitions offered with the question) and either
``call`` (``{"name", "arguments"}``: the call the question must get; then ``answer`` and
``expect`` are optional) or no ``call`` (the question must be answered in text although tools
are offered). With ``call``, ``result`` (the tool's result) and ``answer`` train and test the
answer after the result is fed back. The bundled set is about Veloria, a fictional country no
base model can know, so a base that passes its cases shows the cases test nothing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.tools import check_call, check_tools, tool_names

BUNDLED_DATASET = "veloria.jsonl"
#: The group of held-out cases (paraphrases): scored apart from the trained questions.
HELDOUT = "heldout"
#: How many call questions :func:`tool_cases` also asks with no tools offered.
UNOFFERED = 2
#: The group of retention cases: general questions the base model answers, asked to see what a fine-tune forgot.
RETENTION = "retention"
#: The bundled general questions (``id``, ``question``, ``expect``: words a correct answer contains).
BUNDLED_GENERAL = "general.jsonl"


@dataclass(frozen=True)
class Example:
    """One line of a fine-tuning dataset (see the module docstring)."""

    id: str
    question: str
    answer: str
    paraphrase: str
    expect: tuple[str, ...]
    format: str = ""
    tools: tuple[dict, ...] = ()
    call: dict | None = None
    result: str = ""

    @property
    def kind(self) -> str:
        """``text`` (no tools), ``tool_call`` (a call expected), ``tool_none`` (tools offered, no call), ``tool_result``."""
        if not self.tools:
            return "text"
        if self.call is None:
            return "tool_none"
        return "tool_result" if self.result else "tool_call"



def load_dataset(path: str | os.PathLike[str] | None = None) -> list[Example]:
    """Read a JSONL fine-tuning dataset (the bundled Veloria set when ``path`` is None).

    Raises:
        InputError: missing file, not UTF-8, no examples, or a line that is not a valid example
            (the message names the line and what an example needs).
    """
    if path is None:
        text, source = resources.files("slmops.toolkit.domain.data").joinpath(BUNDLED_DATASET).read_text(), BUNDLED_DATASET
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
            tools, call = _tool_fields(row)
            needed = ("question", "paraphrase") if call and not row.get("result") else ("question", "answer", "paraphrase")
            for key in needed:
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{key!r} must be a non-empty string")
            if call and not row.get("result"):
                row.setdefault("answer", "")
                row.setdefault("expect", [str(v) for v in call["arguments"].values()] or [call["name"]])
            expect = row.get("expect")
            if not isinstance(expect, list) or not expect or not all(isinstance(w, str) and w for w in expect):
                raise ValueError("'expect' must be a non-empty list of words a correct answer contains")
            if row.get("format", "") not in ("", "json"):
                raise ValueError("'format' is 'json' or absent")
            if row.get("format") == "json":
                json.loads(row["answer"])
            example = Example(str(row.get("id") or f"example-{number}"), row["question"], row["answer"],
                              row["paraphrase"], tuple(expect), row.get("format", ""), tuple(tools), call,
                              str(row.get("result") or ""))
        except ValueError as exc:  # JSONDecodeError included
            raise InputError(f"{source}:{number} is not a valid example ({exc}): it needs 'question', 'answer', "
                             "'paraphrase' and 'expect' (a list of words), optionally 'id', 'format': 'json', "
                             "'tools' with 'call' ({'name', 'arguments'}) and 'result'.") from exc
        if example.id in seen:
            raise InputError(f"{source}:{number}: the id {example.id!r} is used twice; ids must be unique.")
        seen.add(example.id)
        examples.append(example)
    if not examples:
        raise InputError(f"{source} holds no examples; write one JSON example per line.")
    return examples


def _tool_fields(row: dict) -> tuple[list[dict], dict | None]:
    """A line's ``tools`` and ``call``, checked (ValueError naming the problem)."""
    if "tools" not in row:
        if "call" in row or "result" in row:
            raise ValueError("'call' and 'result' need 'tools'")
        return [], None
    try:
        tools = check_tools(row["tools"])
    except InputError as exc:
        raise ValueError(str(exc)) from exc
    call = row.get("call")
    if call is None:
        if "result" in row:
            raise ValueError("'result' needs 'call'")
        return tools, None
    if not isinstance(call, dict) or call.get("name") not in tool_names(tools) or \
            not isinstance(call.get("arguments", {}), dict):
        raise ValueError(f"'call' must be {{'name': one of {tool_names(tools)}, 'arguments': {{...}}}}")
    checked = check_call([{"function": {"name": call["name"], "arguments": json.dumps(call.get("arguments", {}))}}],
                                   tools, None)
    if any("schema" in problem for problem in checked.problems):
        raise ValueError(f"'call' does not fit its tool: {checked.problems[0]}")
    return tools, {"name": call["name"], "arguments": dict(call.get("arguments", {}))}


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
        if example.tools:
            continue  # tool examples give tool_call cases (:func:`tool_cases`)
        for kind, question in (("trained", example.question), (HELDOUT, example.paraphrase)):
            expect: dict = {"contains_any": list(example.expect)}
            if example.format == "json":
                expect["json_schema"] = schema
            case = {"id": f"{kind}-{example.id}", "messages": [{"role": "user", "content": question}],
                    "expect": expect}
            out[kind].append({**case, "group": HELDOUT} if kind == HELDOUT else case)
    return out


def tool_cases(examples: list[Example]) -> list[dict]:
    """The checklist's ``tool_call`` cases from a dataset's tool examples: trained, then held-out.

    A call example expects its call; a text example with tools offered expects no call and its
    words; a result example (call, result, then the answer) expects no further call and its
    words. The first :data:`UNOFFERED` call questions are also asked with no tools offered: a
    model that calls anyway fails (it would call tools nobody offered).
    """
    out: list[dict] = []
    unoffered = 0
    for kind in ("trained", HELDOUT):
        for example in examples:
            if not example.tools:
                continue
            question = example.question if kind == "trained" else example.paraphrase
            messages: list[dict] = [{"role": "user", "content": question}]
            expect: dict = {"call": example.call} if example.kind == "tool_call" else {"no_call": True}
            if example.kind == "tool_result":
                call = {"id": "call_1", "type": "function",
                        "function": {"name": example.call["name"], "arguments": json.dumps(example.call["arguments"])}}
                messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": "call_1", "content": example.result}]
            if example.kind != "tool_call":
                expect["contains_any"] = list(example.expect)
            group = {"group": HELDOUT} if kind == HELDOUT else {}
            out.append({"id": f"{kind}-{example.id}", "type": "tool_call", "messages": messages,
                        "tools": list(example.tools), "expect": expect, **group})
            if kind == "trained" and example.kind == "tool_call" and unoffered < UNOFFERED:
                unoffered += 1
                out.append({"id": f"unoffered-{example.id}", "type": "tool_call", "messages": messages, "tools": [],
                            "expect": {"no_call": True}})
    return out


def tool_probe(examples: list[Example]) -> dict | None:
    """The registration probe for a fine-tune of this dataset: its first trained ``tool_call`` case (None: no tool examples)."""
    return next((case for case in tool_cases(examples) if "call" in case["expect"]), None)


def retention_cases() -> list[dict]:
    """The checklist's ``retention`` cases: the bundled general questions, none about the fine-tune's domain.

    Each is asked of the base model (the negative control) and of every build: a question the
    base answers correctly and a build no longer does is one the fine-tune made it forget.

    Example:
        >>> retention_cases()[0]["id"], retention_cases()[0]["group"]
        ('retention-capital-france', 'retention')
    """
    text = resources.files("slmops.toolkit.domain.data").joinpath(BUNDLED_GENERAL).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [{"id": f"{RETENTION}-{row['id']}", "messages": [{"role": "user", "content": row["question"]}],
             "expect": {"contains_any": list(row["expect"])}, "group": RETENTION} for row in rows]


def domain_terms(cases: list[dict]) -> list[str]:
    """The words that name the domain's own facts, from a cases file's trained questions.

    Every word a trained text case expects (``contains_any``, ``contains``; not bare numbers), and
    every name its questions share (a capitalised word, not a sentence's first, in two questions
    or more: ``Veloria``). A general question answered with one of them (the capital of France
    given as Quennport) is the fine-tune's domain leaking into what the base knew.

    Example:
        >>> domain_terms(cases(load_dataset())["trained"])[:3]
        ['Quennport', 'drell', 'sable heron']
    """
    trained = [c for c in cases if not c.get("group") and c.get("type") != "tool_call"]
    words = [w for c in trained for rule in ("contains_any", "contains") for w in c.get("expect", {}).get(rule, [])
             if isinstance(w, str) and not w.strip().isdigit()]
    names: dict[str, int] = {}
    for c in trained:
        text = " ".join(m["content"] for m in c["messages"] if m.get("role") == "user" and isinstance(m.get("content"), str))
        for word in set(re.findall(r"(?<=[a-z,;:] )[A-Z][a-z]{3,}", text)):
            names[word] = names.get(word, 0) + 1
    return list(dict.fromkeys([*words, *(name for name, count in names.items() if count >= 2)]))


def write_cases(examples: list[Example], path: str | os.PathLike[str], *, with_tools: bool = True,
                with_retention: bool = True) -> Path:
    """Write :func:`cases` (trained, then held-out), then :func:`tool_cases`, then :func:`retention_cases`,
    as a checklist cases file (JSONL).

    ``with_tools=False`` leaves the tool cases out (a model without tool-call tokens, whose fine-tune
    skipped the tool examples); ``with_retention=False`` the general questions.
    """
    split = cases(examples)
    chosen = (split["trained"] + split[HELDOUT] + (tool_cases(examples) if with_tools else [])
              + (retention_cases() if with_retention else []))
    lines = [json.dumps(case, ensure_ascii=False) for case in chosen]
    return artifacts.write_text(Path(path), "\n".join(lines) + "\n")
