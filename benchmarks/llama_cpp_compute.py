"""The prompt graph per projection shape: registration's 8-bit int8 compute against the build's 4-bit in FP32 compute.

Registration's prompt graph (``model_prompt.onnx``) runs every 4-bit ``MatMulNBits`` that multiplies
the prompt's rows as an 8-bit one in blocks of 128 in int8 compute (the 4-bit weights requantized;
before, the same 4-bit node in FP32 compute, ``accuracy_level`` 0). Is that the faster form for
every shape (K, N)? For each shape this measures, alternating, medians:

- **the whole prompt pass** of a folder staged as registration serves it, against the same folder with
  that shape's nodes alone back in the previous form (the token graph's 4-bit node in FP32 compute), one
  variant per shape, all loaded in one process (ONNX Runtime GenAI, ``--prompt-tokens`` tokens,
  ``--rounds`` rounds after one untimed);
- **the node alone**: one ``MatMulNBits`` of each form (random weights of the node's shapes and types)
  in a session of its own, on the same number of rows: what a cheap probe would time.

    .venv/bin/python benchmarks/llama_cpp_compute.py MODEL_DIR --rounds 6 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

FP32_COMPUTE, INT8_COMPUTE = 0, 4


def _attributes(node) -> dict:
    return {a.name: a.i for a in node.attribute if a.type == a.INT}


def stage(source: Path, target: Path) -> None:
    """``source`` staged as registration serves it: last-position head, fused gate/up, the prompt graph."""
    from slmops.toolkit.stages import register_prompt
    from slmops.toolkit.weights import lm_head

    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            os.link(item, target / item.name)
    lm_head.serve_last_position(target)
    config = json.loads((target / "genai_config.json").read_text())
    if not register_prompt.serve_graphs(target, config):
        raise SystemExit(f"{source}: no INT4 MatMulNBits in int8 compute, so no prompt graph to compare")
    (target / "genai_config.json").unlink()
    (target / "genai_config.json").write_text(json.dumps(config, indent=4))


def prompt_nodes(graph) -> dict[tuple[int, int], list]:
    """The prompt graph's nodes registration re-expressed (8-bit, int8 compute, its prompt block size), by shape (K, N)."""
    from slmops.toolkit.stages.register_prompt import PROMPT_BLOCK

    shapes: dict[tuple[int, int], list] = {}
    for node in graph.node:
        attributes = _attributes(node)
        if node.op_type == "MatMulNBits" and attributes.get("bits") == 8 and attributes.get(
                "block_size") == PROMPT_BLOCK and attributes.get("accuracy_level") == INT8_COMPUTE:
            shapes.setdefault((attributes["K"], attributes["N"]), []).append(node)
    return shapes


def previous_form(token_graph, name: str):
    """The token graph's node ``name`` (the build's 4-bit node) in FP32 compute: the previous prompt graph's form."""
    import copy

    from onnx import helper

    node = copy.deepcopy(next(n for n in token_graph.node if n.name == name))
    kept = [a for a in node.attribute if a.name != "accuracy_level"]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute("accuracy_level", FP32_COMPUTE)])
    return node


def with_previous_form(folder: Path, target: Path, shape: tuple[int, int]) -> None:
    """``folder`` linked to ``target`` with the prompt graph's ``shape`` nodes in their previous form."""
    import onnx

    from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH

    shutil.copytree(folder, target, copy_function=os.link)
    model = onnx.load(str(folder / PROMPT_GRAPH), load_external_data=False)
    tokens = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    token_weights = {tensor.name: tensor for tensor in tokens.graph.initializer}
    names = {node.name for node in prompt_nodes(model.graph)[shape]}
    nodes = [previous_form(tokens.graph, node.name) if node.name in names else node for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    have = {tensor.name for tensor in model.graph.initializer}
    model.graph.initializer.extend(token_weights[name] for node in nodes if node.name in names
                                   for name in node.input[1:] if name and name not in have)
    (target / PROMPT_GRAPH).unlink()
    onnx.save(model, str(target / PROMPT_GRAPH))


def node_alone(forms: dict[str, tuple], rows: int, rounds: int, threads: int) -> dict[str, float]:
    """Median ms of one run of each form's node alone on ``rows`` rows (random weights of its shapes), alternated.

    Args:
        forms: label to (node, the initializers by name it reads).
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    sessions, options = {}, ort.SessionOptions()
    options.intra_op_num_threads = threads
    for label, (node, initializers) in forms.items():
        attributes, inputs, tensors = _attributes(node), ["a"], []
        for index, name in enumerate(node.input[1:], start=1):
            if not name:
                inputs.append("")
                continue
            tensor = initializers[name]
            dtype, dims = helper.tensor_dtype_to_np_dtype(tensor.data_type), tuple(tensor.dims)
            if index == 4:  # g_idx: each row's block
                values = (np.arange(int(np.prod(dims))) // attributes["block_size"]).reshape(dims).astype(dtype)
            elif np.issubdtype(dtype, np.integer):
                values = rng.integers(0, np.iinfo(dtype).max, dims, dtype=dtype, endpoint=True)
            else:
                values = (rng.random(dims) * 0.01).astype(dtype)
            tensors.append(numpy_helper.from_array(values, f"w{index}"))
            inputs.append(f"w{index}")
        kind = initializers[node.input[2]].data_type
        one = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", **attributes)
        graph = helper.make_graph([one], "node", [helper.make_tensor_value_info("a", kind, [1, rows, attributes["K"]])],
                                  [helper.make_tensor_value_info("y", kind, [1, rows, attributes["N"]])], tensors)
        model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                       helper.make_opsetid("com.microsoft", 1)])
        sessions[label] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    k = _attributes(next(iter(forms.values()))[0])["K"]
    feed = {"a": rng.standard_normal((1, rows, k)).astype(np.float32)}
    for session in sessions.values():
        session.run(None, feed)
    started = time.perf_counter()
    next(iter(sessions.values())).run(None, feed)
    calls = max(1, round(0.015 / max(time.perf_counter() - started, 1e-6)))  # each measurement about 15 ms
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for round_ in range(rounds):
        for label in list(sessions)[::-1 if round_ % 2 else 1]:
            started = time.perf_counter()
            for _ in range(calls):
                sessions[label].run(None, feed)
            times[label].append((time.perf_counter() - started) * 1000 / calls)
    return {label: statistics.median(values) for label, values in times.items()}


def prompt_passes(folders: dict[str, Path], ids: list[int], rounds: int, threads: int) -> dict[str, list[float]]:
    """Each folder's prompt pass (ms), all loaded in one process, alternated, order reversed every round."""
    import onnxruntime_genai as og

    models = {}
    for name, folder in folders.items():
        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        models[name] = og.Model(config)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(rounds + 1):
        for name in list(models)[::-1 if round_ % 2 else 1]:
            params = og.GeneratorParams(models[name])
            params.set_search_options(max_length=len(ids) + 2, do_sample=False)
            generator = og.Generator(models[name], params)
            started = time.perf_counter()
            generator.append_tokens(ids)
            if round_:
                times[name].append((time.perf_counter() - started) * 1000)
            del generator
    return times


def main() -> None:
    import onnx
    from tokenizers import Tokenizer

    from slmops.toolkit.domain.prompts import prompt_text
    from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an INT4 build as `slmops convert` wrote it")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the llama.cpp comparison's 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        registered = Path(work) / "registered"
        stage(args.model, registered)
        model = onnx.load(str(registered / PROMPT_GRAPH), load_external_data=False)
        tokens = onnx.load(str(registered / "model.onnx"), load_external_data=False)
        shapes = prompt_nodes(model.graph)
        initializers = {tensor.name: tensor for tensor in [*model.graph.initializer, *tokens.graph.initializer]}
        base_name = "as registered (8-bit, int8 compute)"
        folders = {base_name: registered}
        for shape in shapes:
            folders[f"K {shape[0]} x N {shape[1]} 4-bit FP32 compute"] = Path(work) / f"{shape[0]}x{shape[1]}"
            with_previous_form(registered, folders[f"K {shape[0]} x N {shape[1]} 4-bit FP32 compute"], shape)
        tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
        ids = tokenizer.encode(prompt_text(tokenizer, args.prompt_tokens), add_special_tokens=False).ids
        ids = ids[:args.prompt_tokens]
        passes = prompt_passes(folders, ids, args.rounds, args.threads)
        base = statistics.median(passes[base_name])
        print(f"{args.model}: {len(ids)} prompt tokens, {args.threads} threads, {args.rounds} alternated rounds; prompt pass as registered "
              f"{base:.1f} ms ({', '.join(f'{t:.0f}' for t in passes[base_name])})")
        print("| shape (nodes) | prompt pass, this shape 4-bit in FP32 compute, ms | x as registered | node alone, "
              "8-bit int8 / 4-bit FP32 compute, ms | faster alone | faster in the pass |")
        print("|---|---|---|---|---|---|")
        for shape, nodes in shapes.items():
            flipped = statistics.median(passes[f"K {shape[0]} x N {shape[1]} 4-bit FP32 compute"])
            alone = node_alone({"8-bit": (nodes[0], initializers),
                                "4-bit": (previous_form(tokens.graph, nodes[0].name), initializers)},
                               len(ids), args.rounds, args.threads)
            print(f"| K {shape[0]} x N {shape[1]} ({len(nodes)}) | {flipped:.1f} | {flipped / base:.3f} | "
                  f"{alone['8-bit']:.2f} / {alone['4-bit']:.2f} | "
                  f"{'8-bit' if alone['8-bit'] < alone['4-bit'] else '4-bit'} | "
                  f"{'8-bit' if base < flipped else '4-bit'} |", flush=True)


if __name__ == "__main__":
    main()
