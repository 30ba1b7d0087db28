"""Stage 2 with the real Foundry Local SDK: register, list, chat, re-register, refuse bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops.toolkit.core.errors import (
    InvalidNameError,
    InvalidOptionError,
    InvalidPromptError,
    ModelNotFoundError,
    RegistrationError,
    TemplateError,
)
from slmops.toolkit.domain import templates
from slmops.toolkit.domain.results.registration import ThreadSetting, read_registration
from slmops.toolkit.runtimes import genai
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_session import models_root
from slmops.toolkit.stages import register
from slmops.toolkit.stages.register_catalog import list_models, unregister
from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH
from slmops.toolkit.stages.register_threads import pick_threads, probe_counts


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*")} if folder.exists() else {}


def test_register_lays_out_the_foundry_cache(tiny_int4: Path, cache: Path) -> None:
    reg = register.register(tiny_int4, "tiny-layout")
    assert reg.model_id == "tiny-layout:1"
    assert reg.path == cache / "models" / "custom" / "tiny-layout"
    info = json.loads((reg.path / "inference_model.json").read_text())
    assert set(info) == {"Name", "Description", "Version", "PromptTemplate", "ModelConfig"}
    assert set(info["PromptTemplate"]) == {"system", "user", "assistant", "prompt"}
    assert info["ModelConfig"] == {"max_length": 512, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}
    # The runtime reads tokenizer_config.json's chat_template first, then chat_template.jinja.
    tokenizer_config = json.loads((reg.path / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"] == (reg.path / "chat_template.jinja").read_text()
    assert json.loads((reg.path / "genai_config.json").read_text())["search"]["max_length"] == 512
    rows = {row.name: row for row in list_models()}
    assert rows["tiny-layout"].registered and rows["tiny-layout"].folder
    assert rows["tiny-layout"].precision == "int4"
    # INT4 in int8 compute: the prompt runs its own graph (8-bit, int8 compute), the tokens the served graph;
    # what reads every position's logits still loads the full graph alone.
    served = json.loads((reg.path / "genai_config.json").read_text())
    assert served["model"]["type"] == "decoder-pipeline" and (reg.path / PROMPT_GRAPH).is_file()
    (row,) = genai.agreement(tiny_int4, {"registered": reg.path})  # the full graph, in a child process
    assert row.tokens > 1 and row.top1_agreement == 1.0 and row.kl_divergence == 0.0


def test_the_runtime_receives_the_chosen_template(tiny_int4: Path) -> None:
    from tokenizers import Tokenizer

    register.register(tiny_int4, "tiny-phi3", template="phi3")
    messages = [{"role": "user", "content": "capital of France"}]
    with LoadedModel("tiny-phi3") as model:
        generation = model.generate(messages, max_tokens=4)
    expected = templates.render(templates.PRESETS[templates.Template.PHI3], messages)
    tokens = Tokenizer.from_file(str(tiny_int4 / "tokenizer.json")).encode(expected, add_special_tokens=False)
    assert generation.prompt_tokens == len(tokens.ids)
    assert generation.completion_tokens == 4 and generation.finish_reason == "length"


def test_reregister_updates_and_other_model_needs_force(tiny_int4: Path, tmp_path: Path) -> None:
    register.register(tiny_int4, "tiny-again")
    register.register(tiny_int4, "tiny-again", template="chatml")
    other = tmp_path / "other"
    shutil.copytree(tiny_int4, other)
    before = snapshot(models_root() / "tiny-again")
    with pytest.raises(RegistrationError, match="--force"):
        register.register(other, "tiny-again")
    assert snapshot(models_root() / "tiny-again") == before
    assert register.register(other, "tiny-again", force=True).name == "tiny-again"
    v2 = register.register(other, "tiny-again", version=2, force=True)
    assert v2.model_id == "tiny-again:2"


@pytest.mark.parametrize("name", ["../evil", "a/b", "has space", "x" * 65, "..", "", "name:1", "-lead"])
def test_unsafe_names_are_refused_with_nothing_written(tiny_int4: Path, name: str) -> None:
    before = snapshot(models_root())
    with pytest.raises(InvalidNameError):
        register.register(tiny_int4, name)
    assert snapshot(models_root()) == before


def test_bad_model_config_is_refused(tiny_int4: Path) -> None:
    with pytest.raises(InvalidOptionError, match="context"):
        register.register(tiny_int4, "tiny-long", model_config=register.ModelConfig(max_length=100_000))
    with pytest.raises(InvalidOptionError, match="top_p"):
        register.register(tiny_int4, "tiny-topp", model_config=register.ModelConfig(max_length=256, top_p=0))
    assert not (models_root() / "tiny-long").exists()


def test_chat_is_multi_turn_and_resettable(tiny_int4: Path) -> None:
    register.register(tiny_int4, "tiny-chat")
    with LoadedModel("tiny-chat") as model:
        first = list(model.chat("hello", system="Be brief.", max_tokens=3, temperature=0))
        second = list(model.chat("again", max_tokens=3, temperature=0))
        assert all(isinstance(p, str) for p in first[:-1])
        assert second[-1].prompt_tokens > first[-1].prompt_tokens  # history is kept
        model.reset()
        third = list(model.chat("again", max_tokens=3, temperature=0))
        assert third[-1].prompt_tokens < second[-1].prompt_tokens
        with pytest.raises(InvalidPromptError):
            model.generate([{"role": "user", "content": ""}])


def test_unknown_model_and_unregister(tiny_int4: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="slmops register"):
        LoadedModel("never-registered")
    register.register(tiny_int4, "tiny-gone")
    unregister("tiny-gone")
    assert "tiny-gone" not in {row.name for row in list_models()}
    assert not (models_root() / "tiny-gone").exists()


def test_hostile_or_broken_model_templates_change_nothing(tiny_int4: Path, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_int4, hostile)
    config = json.loads((hostile / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (hostile / "tokenizer_config.json").write_text(json.dumps(config))
    (hostile / "chat_template.jinja").unlink(missing_ok=True)  # it wins over tokenizer_config.json, as in transformers
    before = snapshot(models_root())
    with pytest.raises(TemplateError):
        register.register(hostile, "tiny-hostile")
    with pytest.raises(TemplateError, match="exactly once"):
        register.register(tiny_int4, "tiny-badcustom", template="custom",
                   custom_template=templates.PromptTemplate("S", "U{Content}", "A{Content}", "P{Content}"))
    assert snapshot(models_root()) == before


def test_model_config_reaches_the_runtime_files(tiny_int4: Path) -> None:
    reg = register.register(tiny_int4, "tiny-config", model_config=register.ModelConfig(temperature=0.2, top_p=0.5,
                                                                          repetition_penalty=1.3))
    search = json.loads((reg.path / "genai_config.json").read_text())["search"]
    assert (search["max_length"], search["temperature"], search["top_p"], search["repetition_penalty"]) == \
        (512, 0.2, 0.5, 1.3)


def test_threads_auto_probes_each_count_and_writes_the_fastest(tiny_int4: Path) -> None:
    reg = register.register(tiny_int4, "tiny-threads")  # auto is the default
    probe = reg.threads.probe
    assert [row.threads for row in probe] == probe_counts() and all(row.decode_tps > 0 for row in probe)
    assert reg.threads.chosen == pick_threads(list(probe)) >= 1 and reg.model_config.threads == reg.threads.chosen
    session = json.loads((reg.path / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert session["intra_op_num_threads"] == reg.threads.chosen
    record = read_registration(reg.path).threads
    assert record.chosen == reg.threads.chosen and record.probe == tuple(probe)
    plain = register.register(tiny_int4, "tiny-threads", model_config=register.ModelConfig(threads=None))  # back to the default
    session = json.loads((plain.path / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert "intra_op_num_threads" not in session and plain.threads is None
    assert register.register(tiny_int4, "tiny-threads", model_config=register.ModelConfig(threads=3)).model_config.threads == 3
    with pytest.raises(InvalidOptionError, match="threads"):
        register.register(tiny_int4, "tiny-threads", model_config=register.ModelConfig(threads="fast"))


def test_doctor_finds_truncated_nested_and_unloadable_models(tiny_int4: Path, tmp_path: Path) -> None:
    from slmops.toolkit.orchestration.doctor import diagnose

    good = diagnose(tiny_int4)
    assert all(c.ok for c in good) and [c.name for c in good[-2:]] == ["runtime load", "web service"]
    assert "does not serve locally registered models" in good[-1].detail  # foundry-local-sdk 2.2.1, offline
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_int4, truncated)
    data = truncated / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    failed = {c.name for c in diagnose(truncated) if not c.ok}
    assert failed == {"model files"}
    nested = tmp_path / "nested"
    shutil.copytree(tiny_int4, nested / "inner")
    shutil.copy(tiny_int4 / "genai_config.json", nested / "genai_config.json")
    assert "own folder" in {c.name for c in diagnose(nested, load=False) if not c.ok}
    unloadable = tmp_path / "unloadable"
    shutil.copytree(tiny_int4, unloadable)
    config = json.loads((unloadable / "genai_config.json").read_text())
    config["model"]["type"] = "no-such-architecture"
    (unloadable / "genai_config.json").write_text(json.dumps(config))
    last = diagnose(unloadable)[-1]
    assert (last.name, last.ok) == ("runtime load", False) and "cannot load" in last.detail


def test_chat_box_streams_keeps_history_and_resets(tiny_int4: Path) -> None:
    from slmops.widgets import ChatBox

    register.register(tiny_int4, "tiny-box")
    box = ChatBox("tiny-box", max_tokens=3, temperature=0)
    try:
        answer = box.send("hello")
        assert answer and "hello" in box.transcript_html() and "tokens" in box._status.value
        box.send("again")
        assert box.transcript_html().count("<b>you</b>") == 2
        box.reset()
        assert "<b>you</b>" not in box.transcript_html()
    finally:
        box.close()


def test_a_thread_probe_is_reused_for_the_same_graph_only(tiny_int4: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    # Probes are kept in <home>/cache/threads: start from none, whatever an earlier run (or test) kept.
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))

    def threads(name: str) -> ThreadSetting:
        return read_registration(models_root() / name).threads

    register.register(tiny_int4, "probe-a")  # --threads auto, the default
    register.register(tiny_int4, "probe-b")
    first, second = threads("probe-a"), threads("probe-b")
    assert second.reused_probe and (second.chosen, second.probe) == (first.chosen, first.probe)
    other = tmp_path / "other"  # the same weights behind another graph: probed anew
    shutil.copytree(tiny_int4, other)
    graph = onnx.load(str(other / "model.onnx"), load_external_data=False)
    graph.doc_string = "another graph"
    onnx.save(graph, str(other / "model.onnx"))
    register.register(other, "probe-c")
    assert threads("probe-c").reused_probe is False
    for name in ("probe-a", "probe-b", "probe-c"):
        unregister(name)
