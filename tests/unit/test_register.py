"""Stage 2 without a model: the rules that pick the thread count a registration writes, and the prompt graph."""

from __future__ import annotations

import os
from pathlib import Path

from slmops.toolkit.domain.results.registration import ThreadSpeed
from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH, STOP_SPINNING, serve_prompt_graph, write_prompt_graph
from slmops.toolkit.stages.register_threads import ThreadChoice, pick_threads, probe_counts


def test_thread_choice_rules() -> None:
    assert probe_counts(1) == [0, 1] and probe_counts(2) == [0, 1, 2] and probe_counts(6) == [0, 1, 2, 4, 6]
    probe = [ThreadSpeed(0, 300.0, 90.0), ThreadSpeed(1, 181.0, 227.0), ThreadSpeed(2, 238.0, 164.0),
             ThreadSpeed(4, 238.0, 150.0)]
    assert pick_threads(probe) == 4  # never the default; a tie goes to the quicker first token
    assert ThreadChoice(4, tuple(probe)).speedup == round(238 / 300, 3)


def _matmul_graph(path: Path, levels_and_bits: list[tuple[int, int]]) -> None:
    """A graph of ``MatMulNBits`` nodes, one per ``(accuracy_level, bits)``, chained from ``x``."""
    import onnx
    from onnx import TensorProto, helper

    nodes, previous = [], "x"
    for index, (level, bits) in enumerate(levels_and_bits):
        nodes.append(helper.make_node("MatMulNBits", [previous, f"w{index}", f"s{index}"], [f"y{index}"],
                                      domain="com.microsoft", K=32, N=32, bits=bits, block_size=32,
                                      accuracy_level=level))
        previous = f"y{index}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 32])])
    onnx.save(helper.make_model(graph), str(path))


def _levels(path: Path) -> list[tuple[int, int]]:
    import onnx

    return [({a.name: a.i for a in n.attribute}["accuracy_level"], {a.name: a.i for a in n.attribute}["bits"])
            for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulNBits"]


def test_an_int4_graph_in_int8_compute_gets_a_prompt_graph_in_fp32_compute(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    _matmul_graph(source / "model.onnx", [(4, 4), (4, 8), (4, 4)])
    folder = tmp_path / "staged"
    folder.mkdir()
    os.link(source / "model.onnx", folder / "model.onnx")
    os.link(source / "model.onnx", folder / PROMPT_GRAPH)  # a stale link is replaced, never written through
    config = {"model": {"type": "llama", "decoder": {"filename": "model.onnx", "session_options": {}}}}

    assert serve_prompt_graph(folder, config)
    assert _levels(folder / PROMPT_GRAPH) == [(0, 4), (4, 8), (0, 4)]  # 8-bit layers keep int8 compute
    assert _levels(folder / "model.onnx") == _levels(source / "model.onnx") == [(4, 4), (4, 8), (4, 4)]
    assert config["model"]["type"] == "decoder-pipeline"
    # two sessions, two thread pools: each stops spinning when its run returns (both stages read the decoder's options)
    assert config["model"]["decoder"]["session_options"] == STOP_SPINNING
    prompt, tokens = (next(iter(stage.values())) for stage in config["model"]["decoder"]["pipeline"])
    assert (prompt["filename"], prompt["run_on_prompt"], prompt["run_on_token_gen"]) == (PROMPT_GRAPH, True, False)
    assert (tokens["filename"], tokens["run_on_prompt"], tokens["run_on_token_gen"]) == ("model.onnx", False, True)
    assert prompt["inputs"] == tokens["inputs"] == ["x"] and prompt["outputs"] == ["y2"]
    assert not serve_prompt_graph(folder, config)  # already a pipeline: left as it is


def test_the_last_position_head_keeps_int8_compute_in_the_prompt_graph(tmp_path: Path) -> None:
    from slmops.toolkit.weights.lm_head import prune_lm_head

    _matmul_graph(tmp_path / "full.onnx", [(4, 4), (4, 4)])
    assert prune_lm_head(tmp_path / "full.onnx", tmp_path / "model.onnx", logits="y1")  # as registration serves it

    assert write_prompt_graph(tmp_path / "model.onnx", tmp_path / PROMPT_GRAPH)
    # the body multiplies the prompt's rows in FP32 compute; the head reads one row, a decode step's shape
    assert _levels(tmp_path / PROMPT_GRAPH) == [(0, 4), (4, 4)]
    write_prompt_graph(tmp_path / "full.onnx", tmp_path / "every_position.onnx")
    assert _levels(tmp_path / "every_position.onnx") == [(0, 4), (0, 4)]  # a head on every position: the prompt's rows


def test_graphs_without_int4_in_int8_compute_are_served_as_one_graph(tmp_path: Path) -> None:
    for name, nodes in {"int8": [(4, 8)], "fp32 compute": [(0, 4)]}.items():
        folder = tmp_path / name
        folder.mkdir()
        _matmul_graph(folder / "model.onnx", nodes)
        config = {"model": {"type": "llama", "decoder": {"filename": "model.onnx"}}}
        assert not serve_prompt_graph(folder, config) and not (folder / PROMPT_GRAPH).exists()
        assert config == {"model": {"type": "llama", "decoder": {"filename": "model.onnx"}}}
    _matmul_graph(tmp_path / "int4.onnx", [(4, 4)])
    cuda = {"model": {"type": "llama", "decoder": {"filename": "int4.onnx",
                                                   "session_options": {"provider_options": [{"cuda": {}}]}}}}
    unknown = {"model": {"type": "no-such-architecture", "decoder": {"filename": "int4.onnx"}}}
    for config in (cuda, unknown):  # another device; a type the runtime would not load is not hidden behind a pipeline
        assert not serve_prompt_graph(tmp_path, config) and "pipeline" not in config["model"]["decoder"]
    assert unknown["model"]["type"] == "no-such-architecture" and not (tmp_path / PROMPT_GRAPH).exists()


def test_a_kept_thread_probe_is_reused_only_for_the_same_graphs(tiny_model: Path, slmops_home: Path,
                                                                  monkeypatch) -> None:
    from slmops.toolkit.runtimes import genai
    from slmops.toolkit.stages import register_threads

    folder = slmops_home / "served"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_bytes((tiny_model / "tokenizer.json").read_bytes())
    (folder / "model.onnx").write_bytes(b"token graph")
    probes: list[Path] = []
    monkeypatch.setattr(genai, "probe_threads", lambda model_dir, ids, counts: probes.append(model_dir) or
                        [ThreadSpeed(1, 100.0, 20.0), ThreadSpeed(2, 150.0, 15.0)])

    first = register_threads.choose_threads(folder, 2048)
    again = register_threads.choose_threads(folder, 2048)
    assert (first.chosen, first.reused, again.chosen, again.reused, len(probes)) == (2, False, 2, True, 1)
    (folder / PROMPT_GRAPH).write_bytes(b"prompt graph")  # a pipeline times differently: probed again
    assert not register_threads.choose_threads(folder, 2048).reused and len(probes) == 2


def _siblings_graph(folder: Path, opset: int = 17, zero_points: tuple[bool, bool] = (False, False),
                    bits: int = 4) -> None:
    """Two ``MatMulNBits`` of ``bits`` in int8 compute reading the same input (an MLP's gate and up, 32 and 48 wide,
    both outputs read), weights in a file; each with zero points where ``zero_points`` says (K = 96: three blocks, so
    a row's 4-bit zero points end in half a byte of padding)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights, nodes = [], []
    blocks, blob = 3, 32 * bits // 8
    for (name, n), zero in zip((("gate", 32), ("up", 48)), zero_points, strict=True):
        weights += [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, blob), dtype=np.uint8), f"{name}.q"),
                    numpy_helper.from_array(rng.random((n, blocks), dtype=np.float32), f"{name}.scales")]
        inputs = ["x", f"{name}.q", f"{name}.scales"]
        if zero:
            packed = -(-blocks * bits // 8)
            weights.append(numpy_helper.from_array(rng.integers(0, 256, (n, packed), dtype=np.uint8), f"{name}.zp"))
            inputs.append(f"{name}.zp")
        nodes.append(helper.make_node("MatMulNBits", inputs, [f"{name}.out"], name=name, domain="com.microsoft",
                                      K=32 * blocks, N=n, bits=bits, block_size=32, accuracy_level=4))
    nodes.append(helper.make_node("Sigmoid", ["gate.out"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 32]),
                               helper.make_tensor_value_info("up.out", TensorProto.FLOAT, ["m", 48])], weights)
    model = helper.make_model(graph, ir_version=10,
                              opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)


def _served_against_unfused(tmp_path: Path, **graph) -> list[list[str]]:
    """Register's graphs (the token graph, and the prompt graph of a 4-bit build) of a :func:`_siblings_graph` folder,
    each run against the unfused build's on one and on three rows: asserts the same values exactly and the build
    untouched.

    Returns:
        Each served graph's node types.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    from slmops.toolkit.stages.register_fuse import FUSED_DATA
    from slmops.toolkit.stages.register_prompt import serve_graphs

    source, folder = tmp_path / "source", tmp_path / "staged"
    source.mkdir(parents=True), folder.mkdir()
    _siblings_graph(source, **graph)
    for name in ("model.onnx", "model.onnx.data"):
        os.link(source / name, folder / name)  # registration's staged folder links the build's files
    data_before = (source / "model.onnx.data").read_bytes()
    config = {"model": {"type": "llama", "decoder": {"filename": "model.onnx", "session_options": {}}}}

    # fused, then the prompt graph made from the fused graph (an 8-bit build has none)
    assert serve_graphs(folder, config) == (graph.get("bits", 4) == 4)
    reference = tmp_path / "reference"  # the unfused graphs: the build's, and its prompt graph made the old way
    reference.mkdir()
    os.link(source / "model.onnx.data", reference / "model.onnx.data")
    graphs = [("model.onnx", source / "model.onnx")]
    if write_prompt_graph(source / "model.onnx", reference / PROMPT_GRAPH):
        graphs.append((PROMPT_GRAPH, reference / PROMPT_GRAPH))
    types = []
    for graph_name, unfused in graphs:
        for rows in (1, 3):  # one row and several take different kernels
            x = {"x": np.random.default_rng(rows).standard_normal((rows, 96)).astype(np.float32)}
            expected = ort.InferenceSession(str(unfused), providers=["CPUExecutionProvider"]).run(None, x)
            got = ort.InferenceSession(str(folder / graph_name), providers=["CPUExecutionProvider"]).run(None, x)
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True)), (graph_name, rows)
        types.append([n.op_type for n in onnx.load(str(folder / graph_name), load_external_data=False).graph.node])
    assert (source / "model.onnx.data").read_bytes() == data_before
    assert sorted(p.name for p in source.iterdir()) == ["model.onnx", "model.onnx.data"]  # the build is untouched
    assert (folder / FUSED_DATA).is_file() == ("Split" in types[0])
    return types


FUSED = ["MatMulNBits", "Split", "Sigmoid"]


def test_gate_and_up_projections_are_served_as_one_node_with_the_same_outputs(tmp_path: Path) -> None:
    from slmops.toolkit.stages.register_fuse import FUSED_DATA, fuse_siblings

    assert _served_against_unfused(tmp_path) == [FUSED, FUSED]
    old = tmp_path / "opset 11"  # Split takes its sizes as an input from opset 13: an older graph is left unfused
    old.mkdir()
    _siblings_graph(old, opset=11)
    assert fuse_siblings(old, ["model.onnx"]) == 0 and not (old / FUSED_DATA).exists()


def test_gate_and_up_projections_with_zero_points_are_fused_with_the_same_outputs(tmp_path: Path) -> None:
    # the mixed recipe's asymmetric 4-bit gate and up; 8-bit siblings (a build without a prompt graph)
    assert _served_against_unfused(tmp_path / "4", zero_points=(True, True)) == [FUSED, FUSED]
    assert _served_against_unfused(tmp_path / "8", zero_points=(True, True), bits=8) == [FUSED]
    # zero points on one of the two only: left apart, each node as it was
    unfused = ["MatMulNBits", "MatMulNBits", "Sigmoid"]
    assert _served_against_unfused(tmp_path / "one", zero_points=(True, False)) == [unfused, unfused]


def test_the_prompt_graph_runs_4_bit_projections_as_8_bit_ones_in_int8_compute(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from slmops.toolkit.stages.register_prompt import PROMPT_BLOCK, PROMPT_DATA, requantized

    source, folder = tmp_path / "source", tmp_path / "staged"
    source.mkdir(), folder.mkdir()
    _siblings_graph(source, zero_points=(True, False))  # an asymmetric node and a symmetric one, K = 96
    os.link(source / "model.onnx.data", folder / "model.onnx.data")
    data_before = (source / "model.onnx.data").read_bytes()
    assert write_prompt_graph(source / "model.onnx", folder / PROMPT_GRAPH)
    nodes = [n for n in onnx.load(str(folder / PROMPT_GRAPH), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    assert [({a.name: a.i for a in n.attribute}["bits"], {a.name: a.i for a in n.attribute}["block_size"],
             {a.name: a.i for a in n.attribute}["accuracy_level"], len(n.input)) for n in nodes] == [
        (8, PROMPT_BLOCK, 4, 3)] * 2  # no zero points: symmetric
    assert (folder / PROMPT_DATA).is_file() and (source / "model.onnx.data").read_bytes() == data_before

    # the same products as the build's 4-bit weights in FP32 compute, within the 8-bit and int8-compute rounding
    def products(graph: Path, level: int | None) -> list:
        model = onnx.load(str(graph), load_external_data=False)
        for attribute in (a for n in model.graph.node for a in n.attribute if a.name == "accuracy_level"):
            attribute.i = attribute.i if level is None else level
        model.graph.output.append(onnx.helper.make_tensor_value_info("gate.out", onnx.TensorProto.FLOAT, ["m", 32]))
        onnx.save(model, str(graph.parent / "products.onnx"))
        session = ort.InferenceSession(str(graph.parent / "products.onnx"), providers=["CPUExecutionProvider"])
        x = {"x": np.random.default_rng(5).standard_normal((5, 96)).astype(np.float32)}
        return [session.run(["gate.out"], x)[0], session.run(["up.out"], x)[0]]

    for got, expected in zip(products(folder / PROMPT_GRAPH, None), products(source / "model.onnx", 0), strict=True):
        assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()

    # each weight within half an 8-bit step of its 4-bit value: scale x (code - zero point), K padded with zeros
    rng = np.random.default_rng(1)
    codes, scales, zero = (rng.integers(0, 256, (4, 3, 16), dtype=np.uint8), rng.random((4, 3), dtype=np.float32),
                           rng.integers(0, 256, (4, 2), dtype=np.uint8))
    nibbles = np.stack([codes & 15, codes >> 4], axis=-1).reshape(4, 3, 32).astype(np.float32)
    zeros = np.stack([zero & 15, zero >> 4], axis=-1).reshape(4, 4)[:, :3].astype(np.float32)
    values = ((nibbles - zeros[:, :, None]) * scales[:, :, None]).reshape(4, 96)
    codes_8, steps = requantized(codes, scales, zero, 96, 32)
    assert codes_8.shape == (4, 1, PROMPT_BLOCK) and steps.shape == (4, 1)
    back = ((codes_8.astype(np.float32) - 128) * steps[:, :, None]).reshape(4, PROMPT_BLOCK)
    assert np.all(np.abs(back[:, :96] - values) <= steps / 2 + 1e-6) and np.all(back[:, 96:] == 0)


def test_register_prompt_bits_4_keeps_the_builds_4_bit_weights_in_fp32_compute(tmp_path: Path) -> None:
    """``--prompt-bits 4`` trades the 8-bit prompt graph's faster first token for the smaller memory: no 8-bit copy of
    the projections, the build's own 4-bit nodes in FP32 compute; it reaches registration through ModelConfig."""
    import onnx
    import pytest

    from slmops.toolkit import cli
    from slmops.toolkit.core.errors import InvalidOptionError
    from slmops.toolkit.stages.register import ModelConfig
    from slmops.toolkit.stages.register_prompt import PROMPT_DATA

    source, folder = tmp_path / "source", tmp_path / "staged"
    source.mkdir(), folder.mkdir()
    _siblings_graph(source, zero_points=(True, False))
    assert write_prompt_graph(source / "model.onnx", folder / PROMPT_GRAPH, prompt_bits=4)
    nodes = [n for n in onnx.load(str(folder / PROMPT_GRAPH), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    assert [({a.name: a.i for a in n.attribute}["bits"], {a.name: a.i for a in n.attribute}["accuracy_level"])
            for n in nodes] == [(4, 0)] * 2
    assert not (folder / PROMPT_DATA).exists()

    args = cli.build_parser().parse_args(["register", "m", "--name", "n", "--prompt-bits", "4"])
    assert args.prompt_bits == 4 and ModelConfig().prompt_bits == 8
    assert "prompt_bits" not in ModelConfig(prompt_bits=4).search_options()  # not a generation default
    with pytest.raises(InvalidOptionError, match="prompt_bits"):
        ModelConfig(max_length=16, prompt_bits=6).validate(32)
