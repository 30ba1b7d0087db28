"""Fine-tunes as people save them: answers that stop, templates rendered as transformers renders them, BOS once.

The models are scripted (tests/scripted_models.py): tiny Llama-architecture weights that answer any
conversation "Hello there" and then write their end-of-turn token, like a fine-tune that learned to
end its turn. Each goes through the real FP32 conversion, Foundry Local registration and the runtime.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import TemplateError
from slmops.toolkit.domain import templates
from slmops.toolkit.domain.results.registration import AddedStopToken, read_registration
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages import checklist, register
from slmops.toolkit.weights.turn_tokens import end_of_turn_tokens
from tests.scripted_models import FAMILIES, PROBE_CONVERSATION, answer_tokens, make_scripted_model

NO_PROBE = register.ModelConfig(threads=None)  # the thread probe is not what these tests check


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory):
    """``family -> (Hugging Face folder, FP32 ONNX folder)``, built on first use."""
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec

    root = tmp_path_factory.mktemp("scripted")
    built: dict[str, tuple[Path, Path]] = {}

    def get(family: str, **options) -> tuple[Path, Path]:
        if family not in built:
            source = make_scripted_model(root / family, family, **options)
            out = convert(ConvertSpec(source, root / f"{family}-fp32", Precision.FP32), progress=False).output_dir
            built[family] = source, out
        return built[family]

    return get


def _transformers_count(source: Path, messages: list[dict], template: str | None = None) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    return len(tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True,
                                             tokenize=True, return_dict=False))


def _assert_stops(generation, source: Path) -> None:
    assert generation.finish_reason == "stop", generation
    assert generation.completion_tokens <= answer_tokens(source) + 1, generation
    assert generation.text.strip() == "Hello there", generation


def _with_template(onnx_dir: Path, target: Path, jinja: str) -> Path:
    """The converted folder with another chat template, as conversion writes it (chat_template.jinja)."""
    shutil.copytree(onnx_dir, target)
    (target / "chat_template.jinja").write_text(jinja)
    return target


def test_a_chatml_fine_tune_with_endoftext_as_eos_stops_in_chat_endpoint_and_checklist(scripted) -> None:
    source, onnx = scripted("chatml-endoftext")
    from slmops.toolkit.orchestration.doctor import diagnose

    before = {c.name: c for c in diagnose(onnx, load=False)}
    assert not before["stop tokens"].ok and "<|im_end|>" in before["stop tokens"].detail  # as converted: never stops
    registration = register.register(onnx, "stop-chatml", model_config=NO_PROBE)
    ids = json.loads((source / "tokenizer.json").read_text())
    im_end = next(t["id"] for t in ids["added_tokens"] if t["content"] == "<|im_end|>")
    assert registration.stop.added[0] == AddedStopToken(im_end, "<|im_end|>", "the chat template's end of turn")
    assert any(note.startswith("Stop tokens: added <|im_end|>") for note in registration.notes)
    folder = models_root() / "stop-chatml"
    assert im_end in json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"]
    assert read_registration(folder).stop_tokens.added[0].id == im_end
    after = {c.name: c for c in diagnose(folder, load=False)}
    assert after["stop tokens"].ok, after["stop tokens"]
    with LoadedModel("stop-chatml") as model:
        answer = model.generate(PROBE_CONVERSATION, max_tokens=40, temperature=0)
        _assert_stops(answer, source)
        assert answer.prompt_tokens == _transformers_count(source, PROBE_CONVERSATION)
        *_, turn = model.chat("Hi", max_tokens=40, temperature=0)  # `slmops chat`'s path
        _assert_stops(turn, source)
    cases = [{"id": "hello", "messages": PROBE_CONVERSATION, "expect": {"contains": ["Hello"]}}]
    report = checklist.run_checklist("stop-chatml", cases=cases, requests=0, lengths=[], progress=False)
    stop = next(c for c in report.checks if c.check == "stop")
    assert stop.passed and (stop.passes, stop.samples) == (1, 1), stop


def test_the_endpoint_answers_stop(scripted) -> None:
    from slmops.toolkit.endpoint.cli import background

    source, onnx = scripted("chatml-endoftext")
    register.register(onnx, "stop-served", model_config=NO_PROBE)
    with background(["stop-served"]) as endpoint:
        answer = endpoint.client().chat.completions.create(model="stop-served", messages=PROBE_CONVERSATION, max_tokens=40,
                                                temperature=0)
    assert answer.choices[0].finish_reason == "stop", answer
    assert answer.usage.completion_tokens <= answer_tokens(source) + 1
    assert answer.choices[0].message.content.strip() == "Hello there"


def test_a_model_that_never_stops_fails_doctor_and_the_checklist(scripted) -> None:
    from slmops.toolkit.orchestration.doctor import diagnose

    _, onnx = scripted("chatml-endoftext")
    register.register(onnx, "stop-never", model_config=NO_PROBE)
    folder = models_root() / "stop-never"  # a hand-edited copy: the end of turn taken out of eos_token_id again
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = config["model"]["eos_token_id"][:1]
    (folder / "genai_config.json").write_text(json.dumps(config))
    stop = {c.name: c for c in diagnose(folder, load=False)}["stop tokens"]
    assert not stop.ok and "slmops register" in stop.detail
    cases = [{"id": "hello", "messages": PROBE_CONVERSATION, "expect": {"contains": ["Hello"]}}]
    report = checklist.run_checklist("stop-never", cases=cases, max_tokens=12, requests=0, lengths=[],
                                     progress=False)
    by = {c.check: c for c in report.checks}
    assert by["domain"].passed and not by["stop"].passed, by["stop"]  # right text, never stops: fails
    assert "ran to max tokens" in by["stop"].detail and by["stop"].value < by["stop"].threshold


def test_gemma_eos_vs_end_of_turn_stops_with_the_preset_and_counts_bos_once(scripted) -> None:
    source, onnx = scripted("gemma")
    with pytest.raises(TemplateError, match="--template gemma") as refused:
        register.register(onnx, "stop-gemma", model_config=NO_PROBE)  # Gemma 2 raises on a system turn
    assert "\n" not in str(refused.value) and "System role not supported" in str(refused.value)
    assert not (models_root() / "stop-gemma").exists()
    registration = register.register(onnx, "stop-gemma", template="gemma", model_config=NO_PROBE)
    assert [row.token for row in registration.stop.added] == ["<end_of_turn>"]
    info = json.loads((models_root() / "stop-gemma" / "inference_model.json").read_text())
    assert info["PromptTemplate"]["prompt"].startswith("<bos><start_of_turn>user")
    with LoadedModel("stop-gemma") as model:
        answer = model.generate(PROBE_CONVERSATION, max_tokens=40, temperature=0)
    _assert_stops(answer, source)
    # BOS once: the runtime adds none itself (measured), the template writes it, as transformers' does.
    assert answer.prompt_tokens == _transformers_count(source, PROBE_CONVERSATION)


def test_llama3_template_with_bos_and_strftime_now_registers_with_auto(scripted) -> None:
    source, onnx = scripted("llama3", generation_eos=["<|end_of_text|>", "<|eot_id|>"])
    registration = register.register(onnx, "stop-llama3", model_config=NO_PROBE)  # auto: BOS, strftime_now
    assert registration.template == "auto"
    eot = json.loads((source / "tokenizer_config.json").read_text())  # the builder already took generation_config's
    assert end_of_turn_tokens(templates.PRESETS[templates.Template.LLAMA3], source / "tokenizer.json")[0][0] in \
        registration.stop.eos_token_id, (eot, registration.stop)
    with LoadedModel("stop-llama3") as model:
        answer = model.generate(PROBE_CONVERSATION, max_tokens=40, temperature=0)
        with_system = model.generate([{"role": "system", "content": "Be brief."}, *PROBE_CONVERSATION],
                                     max_tokens=40, temperature=0)
    _assert_stops(answer, source)
    assert answer.prompt_tokens == _transformers_count(source, PROBE_CONVERSATION)
    assert with_system.prompt_tokens == _transformers_count(
        source, [{"role": "system", "content": "Be brief."}, *PROBE_CONVERSATION])


def test_llama3_preset_counts_like_transformers_llama3_template(scripted, tmp_path: Path) -> None:
    source, onnx = scripted("llama3", generation_eos=["<|end_of_text|>", "<|eot_id|>"])
    register.register(onnx, "stop-llama3-preset", template="llama3", model_config=NO_PROBE)
    llama30 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
               "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
               "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
               "{{ content }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    system = [{"role": "system", "content": "Be brief."}, *PROBE_CONVERSATION]
    with LoadedModel("stop-llama3-preset") as model:
        counts = [model.generate(m, max_tokens=40, temperature=0) for m in (PROBE_CONVERSATION, system)]
    _assert_stops(counts[0], source)
    assert [g.prompt_tokens for g in counts] == [_transformers_count(source, m, llama30)
                                                 for m in (PROBE_CONVERSATION, system)]


def test_a_generation_tag_template_registers_with_auto_and_stops(scripted, tmp_path: Path) -> None:
    source, onnx = scripted("chatml-endoftext")
    folder = _with_template(onnx, tmp_path / "generation", FAMILIES["chatml-generation"].template)
    register.register(folder, "stop-generation-tag", model_config=NO_PROBE)
    with LoadedModel("stop-generation-tag") as model:
        answer = model.generate(PROBE_CONVERSATION, max_tokens=40, temperature=0)
    _assert_stops(answer, source)
    assert answer.prompt_tokens == _transformers_count(source, PROBE_CONVERSATION,
                                                       FAMILIES["chatml-generation"].template)


def test_a_folded_system_template_is_refused_naming_the_gemma_preset(scripted, tmp_path: Path) -> None:
    _, onnx = scripted("gemma")
    folder = _with_template(onnx, tmp_path / "gemma3", FAMILIES["gemma3"].template)
    with pytest.raises(TemplateError, match="folds the system text into the first user turn.*--template gemma"):
        register.register(folder, "stop-gemma3", model_config=NO_PROBE)
    assert not (models_root() / "stop-gemma3").exists()


def test_cli_prints_what_was_added(scripted) -> None:
    from slmops.toolkit import cli

    _, onnx = scripted("chatml-endoftext")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert cli.main(["register", str(onnx), "--name", "stop-cli", "--threads", "default"]) == 0
    assert "Stop tokens: added <|im_end|>" in err.getvalue(), out.getvalue() + err.getvalue()


def test_an_end_of_turn_token_past_the_vocabulary_is_refused_at_registration(tmp_path: Path) -> None:
    """A tokenizer given new turn markers without resize_token_embeddings: the build passes parity (its text
    never uses them), but registering it once gave an eos_token_id that the runtime cannot load. Convert now
    refuses such a source before any work; registration still refuses such a build (made elsewhere)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from slmops.toolkit.core.errors import InputError
    from slmops.toolkit.domain.options import Precision
    from slmops.toolkit.orchestration import doctor
    from slmops.toolkit.stages.convert import convert
    from slmops.toolkit.stages.convert_plan import ConvertSpec
    from tests.models import make_tiny_model

    source = make_tiny_model(tmp_path / "grown")
    built = convert(ConvertSpec(source, tmp_path / "fp32", Precision.FP32), progress=False).output_dir
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tokenizer.eos_token = "<|end|>"
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    for folder in (source, built):  # the build as the grown source once made it (convert now refuses the source)
        tokenizer.save_pretrained(folder)
    end = Tokenizer.from_file(str(source / "tokenizer.json")).token_to_id("<|end|>")
    rows = json.loads((source / "config.json").read_text())["vocab_size"]
    assert end >= rows
    with pytest.raises(InputError, match="resize_token_embeddings"):
        convert(ConvertSpec(source, tmp_path / "again", Precision.FP32), progress=False)
    config = json.loads((built / "genai_config.json").read_text())
    check = doctor.stop_check(built, config)
    assert not check.ok and f"past the model's {rows}-token vocabulary" in check.detail
    target = models_root(None) / "grown-fp32"
    with pytest.raises(InputError, match=rf"<\|end\|> .* is token {end}, past the model's {rows}-token vocabulary"):
        register.register(built, "grown-fp32", model_config=NO_PROBE)
    assert not target.exists()
