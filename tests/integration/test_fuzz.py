"""Property-based fuzzing (hypothesis) of names, templates, params files, cases files and request
options: every input is either accepted and safe, or refused with the toolkit's own input
error; never another exception, never a file written. Bounded (derandomized, a fixed number
of examples) so it runs in `make test`."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import jinja_render, run_params
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_requests import Generation
from slmops.toolkit.stages import register
from slmops.toolkit.stages.convert_checks import validate
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_catalog import validate_name

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
        assert validate_name(name) == name
    except InputError:
        return
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) and ".." not in name


@FUZZ
@given(mapping=st.dictionaries(st.sampled_from([f.name for f in fields(run_params.RunParams)]) | hostile_text, json_values,
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
    parsed = run_params.parse({k: v for k, v in loaded.items() if k != "sweep"})
    for name, value in parsed.as_dict().items():
        run_params.check_value(name, value)  # every accepted value has its parameter's type and range
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


# --- Mutated folders and files through the commands -------------------------------------------------------
# Each example damages one thing as people do by accident (a field removed, of the wrong type or size, a huge value,
# another encoding, a truncated file) and runs a cheap command on it: it works, or exits 2 with one line that is not
# "unexpected error", writes nothing and changes nothing, within a time bound. Found this way and fixed: config.json
# fields of the wrong type ("hidden_size": "x", "architectures": 5) and genai_config.json sections of the wrong type
# ("decoder": "x", "filename": 3) and adapter_config.json's r or lora_alpha of the wrong type ("r": "x") ended in
# "unexpected error: TypeError/AttributeError/ValueError".

MUTATED = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: What a field becomes (``remove`` drops it).
FIELD_VALUES = {"remove": None, "null": None, "text": "x", "list": [1], "object": {"a": 1}, "true": True,
                "negative": -1, "zero": 0, "huge": 10**15, "float": 1.5, "long": "é" * 5000}
#: What a whole file becomes.
FILE_DAMAGE = ("utf-16", "latin-1", "truncated", "empty", "not-an-object")
SECONDS = 30  # each command, well above its normal time, far below a hang


def damage_file(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "utf-16":
        file.write_bytes(data.decode("utf-8", "replace").replace("e", "é", 3).encode("utf-16"))
    elif how == "latin-1":
        file.write_bytes(data.decode("utf-8", "replace").replace("e", "é", 3).encode("latin-1", "replace"))
    elif how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        file.write_bytes(b"")
    else:
        file.write_text("[1, 2]")


def damage_field(file: Path, draw: st.DataObject, how: str) -> str:
    """Set one (possibly nested) field of a JSON file to ``FIELD_VALUES[how]``; the field's path."""
    data = json.loads(file.read_text())
    node, path = data, []
    while True:
        key = draw.draw(st.sampled_from(sorted(node)))
        path.append(key)
        if not isinstance(node[key], dict) or not node[key] or not draw.draw(st.booleans()):
            break
        node = node[key]
    if how == "remove":
        del node[key]
    else:
        node[key] = FIELD_VALUES[how]
    file.write_text(json.dumps(data))
    return ".".join(path)


def damage(folder: Path, draw: st.DataObject, files: list[str]) -> str:
    """Damage one of ``files`` in ``folder``, a field or the whole file; what was done, in words."""
    name = draw.draw(st.sampled_from(files))
    file = folder / name
    how = draw.draw(st.sampled_from([*FIELD_VALUES, *FILE_DAMAGE] if name.endswith(".json") else FILE_DAMAGE[2:4]))
    if how in FIELD_VALUES:
        return f"{name}:{damage_field(file, draw, how)}={how}"
    damage_file(file, how)
    return f"{name}={how}"


def works_or_refuses(argv: list[str], *codes: int) -> tuple[int, str]:
    """Run ``slmops ARGV`` in-process within :data:`SECONDS`: its exit code is 0, 2 or one of ``codes``, a refusal
    is one line, and nothing says "unexpected error" or shows a traceback. ``(code, output)``."""
    import contextlib
    import io
    import time

    from slmops.toolkit import cli

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    text = out.getvalue() + err.getvalue()
    assert time.monotonic() - started < SECONDS, argv
    assert code in (0, 2, *codes), text
    assert "unexpected error" not in text and "Traceback" not in text, text
    if code == 2:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    return code, text


def _model_files(tiny_model: Path) -> list[str]:
    """The model's files, config.json three times over (every command reads it first, and most fields are its)."""
    return sorted(p.name for p in tiny_model.iterdir() if p.is_file()) + ["config.json"] * 2


@settings(MUTATED, max_examples=150)  # the folder the most commands read, and the cheapest command on it
@given(draw=st.data())
def test_a_damaged_model_folder_converts_or_is_refused_in_one_line(tiny_model: Path, draw: st.DataObject) -> None:
    """``convert --method olive-config --dry-run`` checks the model as every conversion does, then writes a config."""
    import tempfile

    from tests.integration.test_hostile import snapshot

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(tiny_model, model)
        what = damage(model, draw, _model_files(tiny_model))
        before, out = snapshot(model), Path(tmp) / "out"
        code, text = works_or_refuses(["convert", str(model), "--method", "olive-config", "--dry-run",
                                       "--out", str(out)])
        assert snapshot(model) == before, what
        assert code == 0 or not out.exists(), (what, text)


@MUTATED
@given(draw=st.data())
def test_a_damaged_adapter_folder_is_checked_or_refused_in_one_line(lora_adapter: Path, tiny_model: Path,
                                                                    draw: st.DataObject) -> None:
    """The checks ``convert`` runs on an adapter before it merges anything (the merge itself is not fuzzed: seconds)."""
    import tempfile

    from tests.integration.test_hostile import snapshot

    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "adapter"
        shutil.copytree(lora_adapter, adapter)
        what = damage(adapter, draw, ["adapter_config.json", "adapter_model.safetensors"])
        before, out = snapshot(adapter), Path(tmp) / "out"
        try:
            validate(ConvertSpec(adapter, out, base=tiny_model))
        except InputError as exc:
            assert "\n" not in str(exc), what
        assert snapshot(adapter) == before and not out.exists(), what


@pytest.fixture(scope="module")
def lora_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.unit.test_adapters import make_adapter

    return make_adapter(tiny_model, tmp_path_factory.mktemp("fuzz-lora") / "lora")


#: Jinja pieces a template is made of, runaway ones included (recursion, huge loops, huge strings, Python errors).
_JINJA = ["{% for message in messages %}", "{% endfor %}", "{{ message['content'] }}", "{{ message.role }}",
          "{% if add_generation_prompt %}assistant:{% endif %}", "{{ eos_token }}", "{{ bos_token }}",
          "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{% for i in range(99999) %}",
          "{% for j in range(99999) %}{% endfor %}", "{{ 'x' * 99999999 }}", "{{ 1 / 0 }}", "{{ messages[9] }}",
          "{{ raise_exception('no') }}", "{{ messages | tojson }}", "{% set ns = namespace(a=1) %}", "<|im_end|>\n",
          "{{ ''.__class__ }}", "{%", "}}", "{{ strftime_now('%Y') }}", "{{ (messages | length) ** 999 }}"]


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from(_JINJA), min_size=1, max_size=6))
def test_any_chat_template_gets_a_doctor_verdict_without_an_unexpected_error(tiny_model: Path, pieces: list[str],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor renders the template as registration, chat, serve and the picker do (one function, with its limits)."""
    import tempfile

    monkeypatch.setattr(jinja_render, "RENDER_SECONDS", 0.5)  # a runaway loop is stopped sooner than a user's 5 s
    from tests.unit.test_bad_input import fake_onnx_folder

    source = "".join(pieces)
    with tempfile.TemporaryDirectory() as tmp:
        folder = fake_onnx_folder(tiny_model, Path(tmp) / "onnx")
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
        (folder / "chat_template.jinja").write_text(source)
        works_or_refuses(["doctor", str(folder), "--no-load"], 1)


@MUTATED
@given(draw=st.data())
def test_a_damaged_genai_config_gets_a_doctor_verdict_and_register_refuses_it_in_one_line(tiny_model: Path,
                                                                                          cache: Path,
                                                                                          draw: st.DataObject) -> None:
    import tempfile

    from tests.integration.test_hostile import snapshot
    from tests.unit.test_bad_input import fake_onnx_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = fake_onnx_folder(tiny_model, Path(tmp) / "onnx")
        what = damage(folder, draw, ["genai_config.json", "tokenizer_config.json"])
        code, text = works_or_refuses(["doctor", str(folder), "--no-load"], 1)
        if code == 0 or "FAIL  genai_config.json" not in text and "FAIL  context length" not in text:
            return  # register would go on to the runtime: not a cheap command
        before = snapshot(cache)
        assert works_or_refuses(["register", str(folder), "--name", "fuzzed"])[0] == 2, what
        assert snapshot(cache) == before, what


@MUTATED
@given(draw=st.data(), how=st.sampled_from(FILE_DAMAGE))
def test_damaged_cases_and_params_files_are_refused_in_one_line(tmp_path: Path, draw: st.DataObject, how: str) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "capital", "messages": [{"role": "user", "content": "Capital of France?"}],
                                 "expect": {"contains_any": ["Paris"]}}) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("precisions: [int4]\nrepeats: 2\nname_prefix: fuzz\n")
    damage_file(draw.draw(st.sampled_from([cases, params])), how)
    before = listing(tmp_path)
    # A valid cases file reaches the model lookup, refused too (no model of that name): exit 2 either way.
    assert works_or_refuses(["test", "no-such-model", "--cases", str(cases), "--out", str(tmp_path / "t")])[0] == 2
    try:
        pipeline.load_params(params)
    except InputError as exc:
        assert "\n" not in str(exc)
    assert listing(tmp_path) == before
