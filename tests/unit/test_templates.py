"""Templates: presets, auto derivation, and the strings-vs-Jinja consistency check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import TemplateError
from slmops.toolkit.domain import jinja_render, template_resolve, templates

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


@pytest.mark.parametrize("preset", [t for t in templates.PRESETS])
def test_presets_render_the_same_both_ways(preset: templates.Template) -> None:
    template = templates.PRESETS[preset]
    assert templates.render(template, CONVERSATION) == jinja_render.render_jinja(templates.to_jinja(template), CONVERSATION)


def test_chatml_matches_the_tutorial_apart_from_trailing_newlines() -> None:
    chatml = templates.PRESETS[templates.Template.CHATML]
    assert chatml.user.rstrip("\n") == "<|im_start|>user\n{Content}<|im_end|>"
    assert chatml.prompt.startswith("<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant")


def test_auto_derives_from_the_models_own_template(tiny_model: Path) -> None:
    resolved = template_resolve.resolve("auto", tiny_model)
    assert resolved.prompt_template == templates.PRESETS[templates.Template.CHATML]
    template_resolve.check_consistency(resolved)


def test_auto_without_a_chat_template_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TemplateError, match="--template"):
        template_resolve.resolve("auto", tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        templates.PromptTemplate("sys", "<u>{Content}", "<a>{Content}", "<u>{Content}<a>"),
        templates.PromptTemplate("<s>{Content}", "<u>{Content}{Content}", "<a>{Content}", "<u>{Content}<a>"),
        templates.PromptTemplate("<s>{Content}", "<u>{Content}", "<a>{Content} {Name}", "<u>{Content}<a>"),
    ],
)
def test_malformed_custom_templates_are_refused(bad: templates.PromptTemplate, tiny_model: Path) -> None:
    with pytest.raises(TemplateError):
        template_resolve.resolve("custom", tiny_model, bad)


def test_unknown_template_name_lists_the_choices(tiny_model: Path) -> None:
    with pytest.raises(TemplateError, match="chatml"):
        template_resolve.resolve("vicuna", tiny_model)


def test_hostile_jinja_is_sandboxed() -> None:
    hostile = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        jinja_render.render_jinja(hostile, CONVERSATION)


def test_consistency_check_catches_a_mismatch() -> None:
    chatml = templates.PRESETS[templates.Template.CHATML]
    resolved = template_resolve.ResolvedTemplate(templates.Template.CHATML, chatml, templates.to_jinja(templates.PRESETS[templates.Template.PHI3]))
    with pytest.raises(TemplateError, match="disagree"):
        template_resolve.check_consistency(resolved)


SMOLLM_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_auto_notes_a_default_system_prompt_only_the_jinja_adds(tmp_path: Path) -> None:
    from tests.models import make_tiny_model

    model = make_tiny_model(tmp_path / "smollm-like", chat_template=SMOLLM_LIKE)
    resolved = template_resolve.resolve("auto", model)
    assert resolved.prompt_template == templates.PRESETS[templates.Template.SMOLLM]
    template_resolve.check_consistency(resolved)  # the probe (with a system turn) agrees
    assert len(resolved.notes) == 1 and "You are a helpful AI assistant." in resolved.notes[0]


def test_template_files_are_read_and_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"system": "S:{Content}\\n", "user": "U:{Content}\\n", "assistant": "A:{Content}\\n", '
                    '"prompt": "U:{Content}\\nA:"}')
    assert templates.load_prompt_template(good).prompt == "U:{Content}\nA:"
    for text, says in [("{not json", "Cannot read"), ('{"system": "x"}', "exactly the string keys"),
                       ('{"system": "S", "user": "U:{Content}", "assistant": "A:{Content}", "prompt": "P:{Content}"}',
                        "exactly once")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(TemplateError, match=says):
            templates.load_prompt_template(bad)


# --- Rendered as transformers renders them (issue 24) ---

_CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                 {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]


@pytest.mark.parametrize("family", ["llama3", "chatml-generation", "gemma3"])
def test_templates_render_exactly_as_transformers_does(family: str) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template

    from tests.scripted_models import FAMILIES

    jinja = FAMILIES[family].template + "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}" \
        "{{ {'a': 'é<'} | tojson }}{% set ns = namespace(n=1) %}{{ ns.n }}{{ dict(x=1) }}{% endfor %}"
    conversation = _CONVERSATION
    theirs, _ = render_jinja_template([conversation], chat_template=jinja, add_generation_prompt=True,
                                      bos_token="<B>", eos_token="<E>")
    assert jinja_render.render_jinja(jinja, conversation, bos_token="<B>", eos_token="<E>") == theirs[0]


def test_strftime_now_and_generation_tags_are_rendered() -> None:
    from datetime import datetime

    assert jinja_render.render_jinja("{{ strftime_now('%Y') }}", []) == str(datetime.now().year)
    assert jinja_render.render_jinja("a{% generation %}b{% endgeneration %}c", []) == "abc"


def test_a_template_that_raises_is_refused_in_one_line_naming_the_preset(tmp_path: Path) -> None:
    from tests.scripted_models import GEMMA2_TEMPLATE

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": GEMMA2_TEMPLATE, "bos_token": "<bos>"}))
    with pytest.raises(TemplateError) as refused:
        template_resolve.resolve("auto", tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "System role not supported" in message and "--template gemma" in message


def test_a_template_folding_the_system_text_names_the_gemma_preset() -> None:
    from tests.scripted_models import GEMMA3_TEMPLATE

    with pytest.raises(TemplateError, match="folds the system text into the first user turn.*--template gemma"):
        template_resolve.derive(GEMMA3_TEMPLATE, bos_token="<bos>")


def test_auto_with_a_bos_template_passes_its_own_consistency_check(tmp_path: Path) -> None:
    from tests.scripted_models import LLAMA32_TEMPLATE

    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": LLAMA32_TEMPLATE, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}))
    resolved = template_resolve.resolve("auto", tmp_path)
    template_resolve.check_consistency(resolved)  # rendered with the model's BOS, as derived
    assert resolved.prompt_template.bos == "<|begin_of_text|>"
    assert templates.render(resolved.prompt_template, _CONVERSATION).count("<|begin_of_text|>") == 1


@pytest.mark.parametrize(("preset", "bos"), [(templates.Template.LLAMA3, "<|begin_of_text|>"), (templates.Template.GEMMA, "<bos>"),
                                             (templates.Template.MISTRAL, "<s>"), (templates.Template.CHATML, "")])
def test_presets_write_their_familys_bos_once(preset: templates.Template, bos: str) -> None:
    template = templates.PRESETS[preset]
    for messages in (_CONVERSATION, _CONVERSATION[1:2]):
        text = templates.render(template, messages)
        assert text.startswith(bos) and (not bos or text.count(bos) == 1)
        assert jinja_render.render_jinja(templates.to_jinja(template), messages) == text
    folded = template.as_json()
    assert folded["system"].startswith(bos) and folded["prompt"].startswith(bos)
    assert codec.load(templates.PromptTemplate, folded).unfolded(bos) == template


def test_named_templates_and_the_jinja_file_are_read(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert template_resolve.read_chat_template(tmp_path) == "D"
    (tmp_path / "chat_template.jinja").write_text("F")
    assert template_resolve.read_chat_template(tmp_path) == "F" and template_resolve.read_chat_template(tmp_path, runtime=True) == "D"
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "rag", "template": "R"}]}))
    with pytest.raises(TemplateError, match="no 'default'"):
        template_resolve.read_chat_template(tmp_path)


def test_a_bos_that_only_looks_like_the_first_turns_start_is_not_taken_for_one() -> None:
    """SmolLM2's BOS is ``<|im_start|>``, which its ChatML template never writes as a BOS: no BOS is derived,
    else the foundry CLI's strings would start a conversation without a system message with it twice."""
    derived = template_resolve.derive(templates.to_jinja(templates.PRESETS[templates.Template.CHATML]), bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert derived.bos == "" and derived == templates.PRESETS[templates.Template.CHATML]
    assert templates.render(derived, [{"role": "user", "content": "Hi"}]).startswith("<|im_start|>user")
    writes_bos = "{{ bos_token }}" + templates.to_jinja(templates.PRESETS[templates.Template.CHATML])
    assert template_resolve.derive(writes_bos, bos_token="<|im_start|>").bos == "<|im_start|>"
