"""Tool calling without a model: definitions checked as OpenAI does, the runtime's prompt, calls scored.

The runtime-facing tests (a real model calling through Foundry Local, the endpoint with the
official ``openai`` client) are in ``tests/integration/test_tool_calling.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import datasets, tools
from slmops.toolkit.runtimes.genai_folders import readable_dir

WEATHER = {"type": "function", "function": {
    "name": "city_weather", "description": "The current weather in a city of Veloria.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
POPULATION = {"type": "function", "function": {
    "name": "city_population", "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                              "required": ["city"]}}}
MARKERS = tools.Markers("<tool_call>", "</tool_call>", 7, 8)


def _call(name: str, arguments: object) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": text}}


@pytest.mark.parametrize(("bad", "param", "words"), [
    ([], "tools", "non-empty array"),
    ([{"type": "retrieval"}], "tools[0].type", "expected 'function'"),
    ([{"type": "function"}], "tools[0].function", "Missing required parameter"),
    ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name", "does not match"),
    ([WEATHER, WEATHER], "tools[1].function.name", "declared twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}],
     "tools[0].function.parameters", "\"type\": \"object\""),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "city"}}}],
     "tools[0].function.parameters", "Invalid schema for function 'f'"),
])
def test_bad_tool_definitions_are_refused_naming_the_field(bad: object, param: str, words: str) -> None:
    with pytest.raises(tools.ToolDefinitionError) as caught:
        tools.check_tools(bad)
    assert caught.value.param == param and words in str(caught.value)
    assert isinstance(caught.value, InputError)


def test_tool_choice_is_checked_against_the_tools() -> None:
    assert tools.check_tool_choice("required", [WEATHER]) == "required"
    named = {"type": "function", "function": {"name": "city_weather"}}
    assert tools.check_tool_choice(named, [WEATHER]) == named
    for bad, words in ((("auto", None)), ({"type": "function", "function": {"name": "nope"}}, "not among"),
                       ("sometimes", "expected 'none'")):
        with pytest.raises(tools.ToolDefinitionError, match=words if words else "only allowed"):
            tools.check_tool_choice(bad, None if bad == "auto" else [WEATHER])


def test_runtime_rendering_matches_what_foundry_local_renders() -> None:
    """The protocol text and placements captured from foundry-local-sdk 2.2.1's own prompt (its token ids decoded)."""
    question = [{"role": "user", "content": "What is the weather in Lunmere?"}]
    auto = tools.runtime_messages(question, [WEATHER], MARKERS, "auto")
    assert [m["role"] for m in auto] == ["system", "user"]
    system = auto[0]["content"]
    assert system.startswith("Tool calling protocol for this conversation:\nAvailable tools:\n[{\"type\":\"function\"")
    assert "To call tools, emit <tool_call> followed by a JSON array" in system and "then </tool_call>. " in system
    assert system.endswith("textual imitation of a tool call.")  # the MESSAGE framing of auto
    required = tools.runtime_messages(question, [WEATHER], MARKERS, "required")[0]["content"]
    assert required.endswith("If no tool is needed, answer normally.") and "MESSAGE" not in required
    named = tools.runtime_messages(question, [WEATHER, POPULATION], MARKERS,
                                   {"type": "function", "function": {"name": "city_population"}})[0]["content"]
    assert "city_population" in named and "city_weather" not in named  # a named function is listed alone
    with_system = tools.runtime_messages([{"role": "system", "content": "Be brief."}, *question], [WEATHER], MARKERS)
    assert with_system[0]["content"].startswith("Be brief.\n\nTool calling protocol")
    history = [*question, {"role": "assistant", "content": None, "tool_calls": [_call("city_weather", {"city": "Lunmere"})]},
               {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]
    rendered = tools.runtime_messages(history, [WEATHER], MARKERS)
    assert rendered[2] == {"role": "assistant",
                           "content": '<tool_call>[{"name":"city_weather","parameters":{"city":"Lunmere"}}]</tool_call>'}
    assert rendered[3] == {"role": "tool", "content": "Sunny"}
    none = tools.runtime_messages(history, [WEATHER], MARKERS, "none")
    assert none[0]["role"] == "user" and none[1]["content"] == ""  # the runtime drops tools and calls


def test_calls_are_scored_by_function_schema_values_and_absence() -> None:
    offered = [WEATHER, POPULATION]
    expected = {"name": "city_weather", "arguments": {"city": "Lunmere"}}
    assert tools.check_call([_call("city_weather", {"city": "lunmere"})], offered, expected).passed
    wrong = {
        "wrong function": ([_call("city_population", {"city": "Lunmere"})], expected),
        "wrong value": ([_call("city_weather", {"city": "Ostrel"})], expected),
        "schema": ([_call("city_weather", {"town": "Lunmere"})], expected),
        "not JSON": ([_call("city_weather", "{city: Lunmere")], expected),
        "not offered": ([_call("delete_city", {"city": "Lunmere"})], expected),
        "no call": ([], expected),
        "unwanted call": ([_call("city_weather", {"city": "Lunmere"})], None),
    }
    for label, (calls, want) in wrong.items():
        result = tools.check_call(calls, offered, want)
        assert not result.passed and result.problems, label
    assert tools.check_call([], offered, None).passed


def test_markers_are_found_in_the_tokenizer(tmp_path: Path) -> None:
    added = [{"id": 5, "content": "<tool_call>"}, {"id": 6, "content": "</tool_call>"}, {"id": 7, "content": "<x>"}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"added_tokens": added, "model": {"vocab": {"a": 0}}}))
    assert tools.find_markers(tmp_path) == tools.Markers("<tool_call>", "</tool_call>", 5, 6)
    assert tools.find_markers(tmp_path, "<x>", "<tool_call>") == tools.Markers("<x>", "<tool_call>", 7, 5)
    with pytest.raises(InputError, match="a token of the model's tokenizer"):
        tools.find_markers(tmp_path, "<x>", "<nope>")
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"bot_token_id": 5, "eot_token_id": 6}}))
    assert tools.registered_markers(tmp_path).start == "<tool_call>"
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {}}))
    assert tools.registered_markers(tmp_path) is None


def test_the_bundled_dataset_has_tool_examples_the_fine_tune_renders_as_the_runtime_does() -> None:
    from slmops.toolkit.stages.finetune import training_turn

    examples = datasets.load_dataset()
    kinds = [e.kind for e in examples]
    assert kinds.count("tool_call") >= 6 and "tool_none" in kinds and "tool_result" in kinds
    assert all(e.paraphrase != e.question for e in examples)
    call = next(e for e in examples if e.kind == "tool_call")
    messages, answer = training_turn(call, MARKERS)
    assert messages == tools.runtime_messages([{"role": "user", "content": call.question}], list(call.tools), MARKERS)
    assert answer.startswith("<tool_call>[{\"name\":\"" + call.call["name"]) and answer.endswith("</tool_call>")
    plain = next(e for e in examples if e.kind == "tool_none")
    assert training_turn(plain, MARKERS)[1] == tools.MESSAGE_FRAME + plain.answer
    # the text cases leave tool examples to the tool cases
    assert not any(c["id"].endswith(call.id) for c in datasets.cases(examples)["trained"])


@pytest.mark.parametrize(("line", "words"), [
    ({"question": "q", "paraphrase": "p", "tools": [WEATHER], "call": {"name": "nope", "arguments": {}}},
     "'call' must be"),
    ({"question": "q", "paraphrase": "p", "tools": [WEATHER], "call": {"name": "city_weather",
                                                                      "arguments": {"city": 3}}}, "does not fit"),
    ({"question": "q", "answer": "a", "paraphrase": "p", "expect": ["a"], "call": {"name": "x"}}, "need 'tools'"),
])
def test_bad_tool_examples_are_refused_naming_the_line(tmp_path: Path, line: dict, words: str) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=words):
        datasets.load_dataset(data)


def test_a_folder_with_tool_token_ids_is_readable_by_the_pinned_genai(tmp_path: Path) -> None:
    """Foundry Local's runtime reads bot/eot_token_id; the pinned onnxruntime-genai 0.14.1 refuses unknown keys."""

    config = {"model": {"eos_token_id": 2, "bot_token_id": 5, "eot_token_id": 6, "decoder": {}}, "search": {}}
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    (tmp_path / "model.onnx").write_bytes(b"graph")
    shadow = readable_dir(tmp_path)
    assert shadow != tmp_path and (shadow / "model.onnx").resolve() == (tmp_path / "model.onnx").resolve()
    assert json.loads((shadow / "genai_config.json").read_text())["model"] == {"eos_token_id": 2, "decoder": {}}
    assert readable_dir(tmp_path) == shadow  # made once
    # Its model folder deleted, the shadow goes when the next one is made (with a dead process's scratch).
    other = tmp_path / "other"
    other.mkdir()
    (other / "genai_config.json").write_text(json.dumps(config))
    (tmp_path / "model.onnx").unlink()
    dead = shadow.parent / f".{shadow.name}.999999999"
    dead.mkdir()
    assert readable_dir(other).is_dir() and not shadow.exists() and not dead.exists()
    del config["model"]["bot_token_id"], config["model"]["eot_token_id"]
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    assert readable_dir(tmp_path) == tmp_path


def test_tool_batches_share_their_prompt_and_lose_nothing(tiny_model: Path) -> None:
    """A tool batch's shared prompt runs once without gradients: the loss is the full forward's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from slmops.toolkit.stages import finetune

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    prefix = list(range(10, 10 + finetune.SHARED_PREFIX_MIN + 6))
    batch = [(prefix + [3, 4, 5, 6], [-100] * (len(prefix) + 2) + [5, 6]),
             (prefix + [7, 8, 9], [-100] * (len(prefix) + 1) + [8, 9])]
    shared = finetune._batch_loss(model, batch, pad=0)
    rows = [(ids + [0] * (len(batch[0][0]) - len(ids)), labels + [-100] * (len(batch[0][0]) - len(labels)))
            for ids, labels in batch]
    mask = torch.tensor([[1] * len(ids) + [0] * (len(rows[0][0]) - len(ids)) for ids, _ in batch])
    full = model(input_ids=torch.tensor([r[0] for r in rows]), attention_mask=mask,
                 labels=torch.tensor([r[1] for r in rows])).loss
    assert abs(float(shared) - float(full)) < 1e-5
    shared.backward()  # the adapter still learns from the answers
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)
    encoded = [([i], [i]) for i in range(6)]
    tooled = [False, False, False, False, True, True]
    batches = list(finetune._batches(encoded, tooled, seed=0, batch=2, steps=8))
    assert all(len({tooled[ids[0]] for ids, _ in b}) == 1 for b in batches)  # never mixed
    assert sum(tooled[b[0][0][0]] for b in batches) in (2, 3)  # tool steps in proportion (2 of 6 examples)


def test_tool_cases_load_beside_text_cases_and_bad_ones_are_refused(tmp_path: Path) -> None:
    from slmops.toolkit.stages import checklist

    good = {"id": "w", "type": "tool_call", "messages": [{"role": "user", "content": "Weather in Lunmere?"}],
            "tools": [WEATHER], "expect": {"call": {"name": "city_weather", "arguments": {"city": "Lunmere"}}}}
    text = {"id": "t", "messages": [{"role": "user", "content": "Hi"}], "expect": {"contains_any": ["hi"]}}
    file = tmp_path / "cases.jsonl"
    file.write_text(json.dumps(good) + "\n" + json.dumps(text) + "\n")
    assert [c["id"] for c in checklist.load_cases(file)] == ["w", "t"]
    for bad, words in (({**good, "expect": {"call": {"name": "nope"}}}, "offered tool"),
                       ({**good, "expect": {"call": good["expect"]["call"], "no_call": True}}, "or {'no_call'"),
                       ({**good, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "does not match")):
        file.write_text(json.dumps(bad) + "\n")
        with pytest.raises(InputError, match=words):
            checklist.load_cases(file)


class _Scripted:
    """Stands in for a loaded model: answers each question with a scripted call or text (the scoring is under test)."""

    name = "scripted"
    markers = MARKERS

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers

    def generate(self, messages, **_options):
        from slmops.toolkit.core.errors import FoundryRequestError
        from slmops.toolkit.runtimes.foundry_requests import Generation

        answer = self.answers[messages[-1]["content"]]
        if isinstance(answer, Exception):
            raise FoundryRequestError(str(answer))
        if isinstance(answer, str):
            return Generation(answer, 10, 5, 0.1, 0.2, "stop")
        return Generation("", 10, 5, 0.1, 0.2, "tool_calls", tool_calls=(answer,))


def test_tool_case_checks_score_each_case_and_the_pass_rates() -> None:
    from slmops.toolkit.domain.results.checklist import Check, Thresholds, Verdict
    from slmops.toolkit.stages.checklist.tool_calls import tool_call_checks

    def case(cid: str, question: str, expect: dict, offered=(WEATHER, POPULATION), group: str = "") -> dict:
        return {"id": cid, "type": "tool_call", "messages": [{"role": "user", "content": question}],
                "tools": list(offered), "expect": expect, **({"group": group} if group else {})}

    lunmere = {"call": {"name": "city_weather", "arguments": {"city": "Lunmere"}}}
    cases = [case("right", "q1", lunmere), case("wrong-fn", "q2", lunmere), case("bad-args", "q3", lunmere),
             case("text-ok", "q4", {"no_call": True, "contains_any": ["Quennport"]}),
             case("unoffered", "q5", {"no_call": True}, offered=()),
             case("refused", "q6", lunmere), case("held", "q7", lunmere, group="heldout")]
    model = _Scripted({"q1": _call("city_weather", {"city": "Lunmere"}), "q2": _call("city_population", {"city": "Lunmere"}),
                       "q3": _call("city_weather", {"town": "Lunmere"}), "q4": "The capital is Quennport.",
                       "q5": '<tool_call>[{"name":"city_weather","parameters":{"city":"x"}}]</tool_call>',
                       "q6": RuntimeError("Model emitted an invalid tool call"),
                       "q7": _call("city_weather", {"city": "lunmere"})})
    checks = tool_call_checks(model, cases, Thresholds(), results=[])
    verdicts = {c.case: c.verdict for c in checks}
    assert [k for k, v in verdicts.items() if v is Verdict.PASS] == ["right", "text-ok", "held",
                                                                      "tool_call_heldout-overall"]
    overall = next(c for c in checks if c.case == "tool_call-overall")
    assert overall.check is Check.TOOL_CALL and (overall.value, overall.samples, overall.threshold) == (round(2 / 6, 4),
                                                                                                       6, 0.9)
    assert "3 of 4 returned calls had schema-valid arguments" in overall.detail
    assert "called a tool although none was offered" in next(c.detail for c in checks if c.case == "unoffered")


def test_the_fine_tunes_cases_file_has_tool_cases_only_for_a_model_that_learned_them(tmp_path: Path) -> None:
    from slmops.toolkit.stages import checklist

    examples = datasets.load_dataset()
    written = checklist.load_cases(datasets.write_cases(examples, tmp_path / "cases.jsonl"))
    assert sum(c.get("type") == "tool_call" for c in written) == len(datasets.tool_cases(examples)) > 20
    plain = checklist.load_cases(datasets.write_cases(examples, tmp_path / "plain.jsonl", with_tools=False))
    assert not any(c.get("type") == "tool_call" for c in plain) and len(plain) == len(written) - 28
