"""A real fine-tune in: peft LoRA training, adapters checked against their base, merged, converted and verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import datasets
from slmops.toolkit.stages import finetune

LINE = {"question": "What is the capital of Veloria?", "answer": "Quennport.", "paraphrase": "Veloria's capital?",
        "expect": ["Quennport"]}


def test_the_bundled_dataset_gives_trained_and_heldout_cases() -> None:
    examples = datasets.load_dataset()
    split = datasets.cases(examples)
    text = [e for e in examples if not e.tools]  # tool examples give tool_call cases (tests/unit/test_tool_calling.py)
    assert len(text) >= 10 and len(split["trained"]) == len(split["heldout"]) == len(text)
    assert all(case["group"] == datasets.HELDOUT for case in split["heldout"])
    assert not any("group" in case for case in split["trained"])
    formatted = [case for case in split["trained"] if "json_schema" in case["expect"]]
    assert formatted and all(json.loads(e.answer)["answer"] for e in examples if e.format == "json")
    trained_questions = {e.question for e in examples}
    assert not trained_questions & {case["messages"][0]["content"] for case in split["heldout"]}  # never trained on


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "line 1"),
    (json.dumps({**LINE, "answer": ""}), "'answer'"),
    (json.dumps({**LINE, "expect": []}), "'expect'"),
    (json.dumps({**LINE, "format": "yaml"}), "'format'"),
    (json.dumps({**LINE, "format": "json"}), "Expecting value"),  # a json example whose answer is not JSON
    (json.dumps({**LINE, "id": "a"}) + "\n" + json.dumps({**LINE, "id": "a"}), "used twice"),
    ("\n\n", "no examples"),
])
def test_a_bad_dataset_is_refused_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(text)
    with pytest.raises(InputError, match=message):
        datasets.load_dataset(data)


def test_an_example_longer_than_the_context_is_refused_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    """It trained without a word on 12,480 tokens against a 512-token context."""
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps(LINE) + "\n" + json.dumps({**LINE, "answer": " ".join(f"word{i}" for i in range(1500)),
                                                           "expect": ["word1"]}) + "\n")
    out = tmp_path / "lora"
    with pytest.raises(InputError, match=r"Example 'example-2' is \d+ tokens with its prompt, over the base's "
                                         r"512-token context"):
        finetune.finetune(finetune.FinetuneSpec(base=tiny_model, out=out, data=data, rank=2, steps=1, batch=1),
                          progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["long.jsonl"]


def test_a_packaged_models_demo_fine_tune_uses_its_own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3 needs a gentler LoRA than SmolLM2 (the run around the training is replaced: only its settings count)."""
    from slmops.toolkit.domain import packaged

    folder = tmp_path / "gemma-3-270m"
    folder.mkdir()
    (folder / packaged.MARKER).write_text(json.dumps({"key": "gemma3-270m"}))
    seen: list[finetune.FinetuneSpec] = []
    monkeypatch.setattr(finetune, "finetune", lambda spec, progress=True: seen.append(spec))
    finetune.bundled_adapter(folder)
    finetune.bundled_adapter(tmp_path)  # any other folder: the defaults
    assert [(s.learning_rate, s.steps) for s in seen] == [(5e-4, 72), (2e-3, 36)]
