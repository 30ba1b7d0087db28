"""The prompt graph's compute type per 4-bit projection shape: FP32 compute (registration's) against int8 compute.

Registration's prompt graph (``model_prompt.onnx``) runs every 4-bit ``MatMulNBits`` that multiplies
the prompt's rows in FP32 compute (``accuracy_level`` 0). Would a probe at registration that chose the
compute type per shape (K, N) do better? For each shape this measures, alternating, medians:

- **the whole prompt pass** of a folder staged as registration serves it, against the same folder with
  that shape's nodes alone in int8 compute (``accuracy_level`` 4), one variant per shape, all loaded in
  one process (ONNX Runtime GenAI, ``--prompt-tokens`` tokens, ``--rounds`` rounds after one untimed);
- **the node alone**: one ``MatMulNBits`` of that shape (random weights of the node's shapes and types)
  in a session of its own, on the same number of rows, at level 0 and 4: what a cheap probe would time.

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
    """The prompt graph's 4-bit ``MatMulNBits`` in FP32 compute, by shape (K, N)."""
    shapes: dict[tuple[int, int], list] = {}
    for node in graph.node:
        attributes = _attributes(node)
        if node.op_type == "MatMulNBits" and attributes.get("bits", 4) == 4 and attributes.get(
                "accuracy_level", 0) == FP32_COMPUTE:
            shapes.setdefault((attributes["K"], attributes["N"]), []).append(node)
    return shapes


def with_level(folder: Path, target: Path, shape: tuple[int, int]) -> None:
    """``folder`` linked to ``target`` with the prompt graph's ``shape`` nodes in int8 compute."""
    import onnx

    from slmops.toolkit.stages.register_prompt import PROMPT_GRAPH

    shutil.copytree(folder, target, copy_function=os.link)
    model = onnx.load(str(folder / PROMPT_GRAPH), load_external_data=False)
    for node in prompt_nodes(model.graph)[shape]:
        for attribute in node.attribute:
            if attribute.name == "accuracy_level":
                attribute.i = INT8_COMPUTE
    (target / PROMPT_GRAPH).unlink()
    onnx.save(model, str(target / PROMPT_GRAPH))


def node_alone(node, initializers: dict, rows: int, rounds: int, threads: int) -> dict[int, float]:
    """Median ms of one run of ``node`` alone on ``rows`` rows (random weights), at level 0 and 4, alternated."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    attributes, rng = _attributes(node), np.random.default_rng(0)
    inputs, tensors = ["a"], []
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
    sessions, options = {}, ort.SessionOptions()
    options.intra_op_num_threads = threads
    for level in (FP32_COMPUTE, INT8_COMPUTE):
        one = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft",
                               **{**{k: v for k, v in attributes.items() if k != "accuracy_level"},
                                  "accuracy_level": level})
        graph = helper.make_graph([one], "node", [helper.make_tensor_value_info("a", kind, [1, rows, attributes["K"]])],
                                  [helper.make_tensor_value_info("y", kind, [1, rows, attributes["N"]])], tensors)
        model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                       helper.make_opsetid("com.microsoft", 1)])
        sessions[level] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.standard_normal((1, rows, attributes["K"])).astype(helper.tensor_dtype_to_np_dtype(kind))}
    for session in sessions.values():
        session.run(None, feed)
    started = time.perf_counter()
    sessions[FP32_COMPUTE].run(None, feed)
    calls = max(1, round(0.015 / max(time.perf_counter() - started, 1e-6)))  # each measurement about 15 ms
    times: dict[int, list[float]] = {level: [] for level in sessions}
    for round_ in range(rounds):
        for level in sorted(sessions, reverse=bool(round_ % 2)):
            started = time.perf_counter()
            for _ in range(calls):
                sessions[level].run(None, feed)
            times[level].append((time.perf_counter() - started) * 1000 / calls)
    return {level: statistics.median(values) for level, values in times.items()}


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
        shapes = prompt_nodes(model.graph)
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        folders = {"as registered (FP32 compute)": registered}
        for shape in shapes:
            folders[f"K {shape[0]} x N {shape[1]} in int8 compute"] = Path(work) / f"{shape[0]}x{shape[1]}"
            with_level(registered, folders[f"K {shape[0]} x N {shape[1]} in int8 compute"], shape)
        tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
        ids = tokenizer.encode(prompt_text(tokenizer, args.prompt_tokens), add_special_tokens=False).ids
        ids = ids[:args.prompt_tokens]
        passes = prompt_passes(folders, ids, args.rounds, args.threads)
        base = statistics.median(passes["as registered (FP32 compute)"])
        print(f"{args.model}: {len(ids)} prompt tokens, {args.threads} threads, {args.rounds} alternated rounds; prompt pass as registered "
              f"{base:.1f} ms ({', '.join(f'{t:.0f}' for t in passes['as registered (FP32 compute)'])})")
        print("| shape (nodes) | prompt pass, this shape in int8 compute, ms | x as registered | node alone, "
              "FP32 / int8 compute, ms | faster alone | faster in the pass |")
        print("|---|---|---|---|---|---|")
        for shape, nodes in shapes.items():
            name = f"K {shape[0]} x N {shape[1]} in int8 compute"
            flipped = statistics.median(passes[name])
            alone = node_alone(nodes[0], initializers, len(ids), args.rounds, args.threads)
            print(f"| K {shape[0]} x N {shape[1]} ({len(nodes)}) | {flipped:.1f} | {flipped / base:.3f} | "
                  f"{alone[FP32_COMPUTE]:.2f} / {alone[INT8_COMPUTE]:.2f} | "
                  f"{'int8' if alone[INT8_COMPUTE] < alone[FP32_COMPUTE] else 'FP32'} | "
                  f"{'int8' if flipped < base else 'FP32'} |", flush=True)


if __name__ == "__main__":
    main()
