"""Property-based fuzzing (hypothesis) of names, templates, params files, cases files and request
options: every input is either accepted and safe, or refused with the toolkit's own input
error; never another exception, never a file written. Bounded (derandomized, a fixed number
of examples) so it runs in `make test`."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import params as P
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.runtimes.foundry import Generation, LoadedModel
from slmops.toolkit.stages import register

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that looks like what a hostile user would type: path pieces, newlines, template syntax.
_PIECES = [*"aZ09._-/\\:\n\t {}%#'\"<>|$~`\x00é😀", "..", "{Content}", "{{", "}}", "{%", "%}", "__class__"]
hostile_text = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                           | hostile_text, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=12)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@FUZZ
@given(name=st.one_of(hostile_text, st.text(max_size=80)))
def test_names_are_accepted_only_when_safe(name: str) -> None:
    try:
        assert register.validate_name(name) == name
    except InputError:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) and ".." not in name


@FUZZ
@given(mapping=st.dictionaries(st.sampled_from([f.name for f in fields(P.RunParams)]) | hostile_text, json_values,
                               max_size=5))
def test_params_files_are_refused_with_the_parameter_named_or_fully_valid(mapping: dict, tmp_path: Path) -> None:
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(mapping, allow_unicode=True))
    before = listing(tmp_path)
    try:
        loaded = pipeline.load_params(file)
    except InputError:
        assert listing(tmp_path) == before
        return
    parsed = P.parse({k: v for k, v in loaded.items() if k != "sweep"})
    for name, value in parsed.as_dict().items():
        P.check_value(name, value)  # every accepted value has its parameter's type and range
    assert listing(tmp_path) == before


@pytest.fixture(scope="module")
def fuzz_model(tiny_int4: Path):
    register.register(tiny_int4, "fuzz-tiny", force=True)
    with LoadedModel("fuzz-tiny") as model:
        yield model


def _answered_or_refused(model: LoadedModel, strategies: dict) -> tuple[list[int], list[str]]:
    """Fuzz ``model.generate`` over ``strategies``: each request is answered, or refused with an input error."""
    answered: list[int] = []
    refused: list[str] = []

    @settings(max_examples=80, deadline=None, derandomize=True, database=None)
    @given(**strategies)
    def fuzz(messages: object, max_tokens: object, temperature: object, seed: object) -> None:
        try:
            generation = model.generate(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        except InputError as exc:
            refused.append(type(exc).__name__)
            return
        assert isinstance(generation, Generation) and 1 <= generation.completion_tokens <= max_tokens
        answered.append(generation.completion_tokens)

    fuzz()
    return answered, refused


HOSTILE_OPTIONS = {
    "max_tokens": st.one_of(st.integers(-3, 8), st.booleans(), st.floats(allow_nan=True), hostile_text),
    "temperature": st.one_of(st.floats(-1, 3), st.just(float("nan")), st.integers(-1, 3), st.none()),
    # Found this way: a seed of 2**31 or more made the runtime fail ("stoi") instead of being refused.
    "seed": st.one_of(st.integers(-2, 2**64), st.floats(allow_nan=True)),
}


@pytest.mark.parametrize("option", HOSTILE_OPTIONS)
def test_request_options_are_answered_or_refused_before_the_runtime_sees_them(fuzz_model: LoadedModel,
                                                                              option: str) -> None:
    """One option fuzzed at a time, the others valid, so every value of it meets a request that could run."""
    answered, refused = _answered_or_refused(fuzz_model, {
        "messages": st.just([{"role": "user", "content": "Hi"}]), "max_tokens": st.just(4),
        "temperature": st.just(0.0), "seed": st.just(0), option: HOSTILE_OPTIONS[option]})
    assert answered and refused  # both sides were exercised


def test_request_messages_are_answered_or_refused_before_the_runtime_sees_them(fuzz_model: LoadedModel) -> None:
    turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", ""]),
                                  "content": st.sampled_from(["Hi", "2+2?", "Bonjour 😀"]) | hostile_text})
    answered, refused = _answered_or_refused(fuzz_model, {
        "messages": st.one_of(st.lists(turn, max_size=4), json_values,
                              st.lists(st.dictionaries(hostile_text, json_values, max_size=3), max_size=2)),
        "max_tokens": st.just(4), "temperature": st.just(0.0), "seed": st.just(0),
    })
    assert answered and refused
