"""Property-based fuzzing (hypothesis) of templates and cases files, which loads no model: every input is
either accepted and safe, or refused with the toolkit's own input error."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from slmops.toolkit.core.errors import InputError, TemplateError
from slmops.toolkit.domain import jinja_render, templates
from slmops.toolkit.stages import checklist
from tests.integration.test_fuzz import FUZZ, hostile_text, json_values


@FUZZ
@given(strings=st.lists(hostile_text, min_size=4, max_size=4),
       messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                "content": hostile_text}), min_size=1, max_size=4))
def test_prompt_templates_either_refuse_or_render_the_same_both_ways(strings: list[str], messages: list[dict]) -> None:
    template = templates.PromptTemplate(*strings)
    try:
        template.validate()
    except TemplateError:
        return
    # Accepted strings must give a Jinja template that renders exactly what the four strings do.
    assert jinja_render.render_jinja(templates.to_jinja(template), messages) == templates.render(template, messages)


@FUZZ
@given(source=hostile_text)
def test_a_hostile_jinja_chat_template_only_ever_raises_template_error(source: str) -> None:
    try:
        jinja_render.render_jinja(source, [{"role": "user", "content": "hi"}])
    except TemplateError:
        pass


@FUZZ
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), hostile_text,
                                st.fixed_dictionaries({"messages": json_values, "expect": json_values}).map(json.dumps),
                                st.fixed_dictionaries({
                                    "messages": st.just([{"role": "user", "content": "hi"}]),
                                    "expect": st.dictionaries(st.sampled_from(checklist.CONTENT_RULES
                                                                              + checklist.FORMAT_RULES),
                                                              json_values, max_size=3)}).map(json.dumps)),
                      max_size=4),
       answer=hostile_text)
def test_cases_files_are_refused_by_line_or_judged_without_error(lines: list[str], answer: str, tmp_path: Path) -> None:
    file = tmp_path / "cases.jsonl"
    file.write_text("\n".join(line.replace("\n", " ") for line in lines), encoding="utf-8")
    try:
        cases = checklist.load_cases(file)
    except InputError:
        return
    for case in cases:  # a loaded case can always be judged: no regex, schema or type blows up mid-run
        passed, threshold, score = checklist.judge(answer, case["expect"])
        assert isinstance(passed, bool) and 0 <= score <= 1 and isinstance(threshold, str)
