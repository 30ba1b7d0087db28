"""The pure parts of issue 45's benchmarks beside benchmarks/llama_cpp.py: the size sweep's arguments, bound and
table (llama_cpp_sizes.py), Foundry Local's ratio verdict (foundry_direct.py) and the INT4 setting variants
(int4_settings.py). No llama.cpp, no model."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", _BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("llama_cpp")
sizes = _load("llama_cpp_sizes")


def test_an_unknown_shape_is_refused_before_any_work_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["llama_cpp.py", "--shapes", "qwen2.5-0.5b", "qwen9-7b"])
    monkeypatch.setattr(bench, "require_tools", lambda: pytest.fail("the tools were looked for before the check"))
    with pytest.raises(SystemExit) as raised:
        bench.main()
    message = str(raised.value.code)
    assert message.startswith("--shapes qwen9-7b: name one of ") and "qwen2.5-1.5b" in message
    assert "\n" not in message


def test_the_sweep_refuses_a_prompt_length_below_one(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["llama_cpp.py", "--shapes", "qwen2.5-0.5b", "--prompt-lengths", "0"])
    with pytest.raises(SystemExit, match="--prompt-lengths"):
        bench.main()


def test_decode_as_a_share_of_the_bandwidth_bound():
    # 20 GB/s over 800 MB a token allows 25 tok/s: 20 tok/s is 80% of it.
    assert sizes.bound_share(20.0, 20.0, 800.0) == pytest.approx(0.8)


def test_the_sweep_table_names_shape_pair_prompt_and_both_engines():
    def fig(median, low, high):
        return {"median": median, "min": low, "max": high}

    result = {"shape": "qwen2.5-0.5b", "precision": "int4", "quant": "Q4_0", "prompt_tokens": 512,
              "ours": {"first_token_ms": fig(900.0, 0, 0), "decode_tps": fig(30.0, 0, 0)},
              "llama_cpp": {"first_token_ms": fig(1000.0, 0, 0), "decode_tps": fig(25.0, 0, 0)},
              "first_token_ratio": fig(0.9, 0.85, 0.95), "decode_ratio": fig(1.2, 1.1, 1.3),
              "ours_bound_share": 0.61, "llama_bound_share": 0.5, "first_token_verdict": "pass",
              "decode_verdict": "pass"}
    (row,) = sizes.table_rows([result])
    assert row == ["qwen2.5-0.5b", "INT4 / Q4_0", "512", "900 / 1000", "0.90 (0.85-0.95)", "30.0 / 25.0",
                   "1.20 (1.10-1.30)", "61% / 50%", "pass, pass"]
    assert len(row) == len(sizes.HEADERS)


def test_foundry_local_against_direct_is_judged_on_every_round():
    direct = _load("foundry_direct")
    assert direct.verdict([0.95, 1.08]) == "pass"
    assert direct.verdict([0.95, 1.2]) == "warn"
    assert direct.verdict([1.3, 0.8]) == "fail"


def _graph(path: Path, level: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=32, N=8, bits=4,
                            block_size=32, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    onnx.save(helper.make_model(graph), str(path))


def test_a_variant_changes_only_what_it_names_and_links_the_rest(tmp_path):
    import onnx

    settings = _load("int4_settings")
    source = tmp_path / "registered"
    source.mkdir()
    (source / "genai_config.json").write_text(json.dumps({"model": {"type": "decoder-pipeline", "decoder": {
        "session_options": {"log_id": "x"}, "pipeline": [{"prompt": {"filename": "model_prompt.onnx"}}]}}}))
    (source / "model.onnx.data").write_bytes(b"weights")
    _graph(source / "model.onnx", 4)
    _graph(source / "model_all_positions.onnx", 4)
    _graph(source / "model_prompt.onnx", 4)

    spin = settings.stage(source, tmp_path / "spin", "config", {"session.intra_op.allow_spinning": "0"})
    options = json.loads((spin / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    assert options == {"log_id": "x", "session.intra_op.allow_spinning": "0"}
    assert (spin / "model.onnx").samefile(source / "model.onnx")
    assert json.loads((source / "genai_config.json").read_text())["model"]["decoder"]["session_options"] == {"log_id": "x"}

    level = settings.stage(source, tmp_path / "acc2", "accuracy", 2)
    for graph in settings.GRAPHS:
        (node,) = onnx.load(str(level / graph)).graph.node
        assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 2
        (kept,) = onnx.load(str(source / graph)).graph.node
        assert {a.name: a.i for a in kept.attribute}["accuracy_level"] == 4
    assert (level / "model.onnx.data").samefile(source / "model.onnx.data")

    one = settings.stage(source, tmp_path / "one", "one graph", "llama")  # as registered before the prompt graph
    assert json.loads((one / "genai_config.json").read_text())["model"] == {
        "type": "llama", "decoder": {"session_options": {"log_id": "x"}}}
    assert not (one / "model_prompt.onnx").exists() and (one / "model.onnx").samefile(source / "model.onnx")
