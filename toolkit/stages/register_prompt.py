"""Registration's prompt graph: the prompt in its own graph, the generated tokens in int8 compute.

An INT4 ``MatMulNBits`` at ``accuracy_level`` 4 (the builder's default) quantizes its input to
int8 and multiplies in int8: the faster kernel for one token at a time (decode). On a whole
prompt, ONNX Runtime's CPU kernel for 4-bit weights in blocks of 32 is slower in int8 compute than
in FP32 compute, and faster still is its int8-compute kernel for 8-bit weights in blocks of
:data:`PROMPT_BLOCK` (fewer per-block scalings per multiply-add). So the prompt graph re-expresses
each such 4-bit projection as an 8-bit one: the 4-bit weights are unpacked (scale x (code - zero
point)) and quantized again symmetrically to 8 bits per block of :data:`PROMPT_BLOCK`, written to
:data:`PROMPT_DATA`. An 8-bit step is at most 1/127 of a block's largest weight, a small fraction
of the 4-bit step it re-expresses, so the prompt's numerics stay those of int8 compute on the
build's own weights within a small rounding. A node whose weights are not initializers of the
graph (or which has a group index or bias) is set to FP32 compute instead (``accuracy_level`` 0).

The served folder keeps both: its graph for the generated tokens, and :data:`PROMPT_GRAPH` for
the prompt; ``genai_config.json`` becomes an ONNX Runtime GenAI ``decoder-pipeline`` that runs the
first on token generation only and the second on the prompt only (``run_on_prompt``/``run_on_token_gen``),
both on the same key/value cache. Each graph is its own ONNX Runtime session with its own weights
in memory, and each has its own intra-op threads: their spinning stops when a run
returns (:data:`STOP_SPINNING`), so one session's idle threads do not take the cores the other runs on.
"""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.stages.register_fuse import fuse_siblings
from slmops.toolkit.weights.lm_head import ALL_POSITIONS, UNSQUEEZE

PROMPT_GRAPH = "model_prompt.onnx"
#: The prompt graph's own weights: its projections re-expressed in 8 bits.
PROMPT_DATA = "model_prompt.onnx.data"
#: The block size of the prompt graph's 8-bit projections (ONNX Runtime takes 16 to 256).
PROMPT_BLOCK = 128
#: The bits the prompt graph's 4-bit projections run in: 8 (re-expressed, int8 compute: the faster prompt, the
#: prompt session holding 8-bit weights) or 4 (the build's own, FP32 compute: the smaller memory).
PROMPT_BITS = (8, 4)
PIPELINE_TYPE = "decoder-pipeline"
PROMPT_STAGE, TOKEN_STAGE = "prompt", "tokens"
INT8_COMPUTE, FP32_COMPUTE = 4, 0
#: ONNX Runtime's session option that ends a session's thread-pool spinning when its run returns.
#: Each stage is its own session with its own intra-op threads; without it, the prompt session's
#: threads spin on after the prompt, taking cores from the first generated tokens, and the token
#: session's threads spin on after the last token, taking cores from the next prompt.
STOP_SPINNING = {"session.force_spinning_stop": "1"}
#: Model types ONNX Runtime GenAI runs with its plain decoder class, as the pipeline does; any other
#: type (one with its own class, or one the runtime does not know) is served as it is.
PLAIN_DECODER_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "granite", "olmo", "smollm3"})


def _attribute(node, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


#: The output of the last-position edit (:mod:`slmops.toolkit.weights.lm_head`): one row, whatever the prompt's length.
ONE_ROW = f"{UNSQUEEZE}/output_0"


def _unpacked(codes, bits: int, count: int):
    """The first ``count`` ``bits``-bit codes of each row of ``codes`` (uint8, low bits first), as float32."""
    import numpy as np

    rows = codes.reshape(codes.shape[0], -1)
    if bits == 8:
        return rows[:, :count].astype(np.float32)
    return np.stack([rows & 0x0F, rows >> 4], axis=-1).reshape(rows.shape[0], -1)[:, :count].astype(np.float32)


def requantized(weight, scales, zero_points, k: int, block: int, block_8: int = PROMPT_BLOCK):
    """A 4-bit ``MatMulNBits``'s weights as 8-bit codes in blocks of ``block_8``, symmetric (no zero points).

    Args:
        weight: the node's packed codes, ``[N, blocks, block / 2]`` uint8.
        scales: its scales, ``N x blocks`` float32 (any shape).
        zero_points: its packed 4-bit zero points (``[N x ceil(blocks / 2)]`` uint8), or None (8, symmetric).
        k: the node's K.
        block: its block size.
        block_8: the 8-bit block size.

    Returns:
        The 8-bit codes ``[N, ceil(K / block_8), block_8]`` uint8 (zero point 128, ONNX Runtime's default for 8
        bits; K padded with zeros) and their scales ``[N, ceil(K / block_8)]`` float32.
    """
    import numpy as np

    n, blocks = weight.shape[0], -(-k // block)
    codes = _unpacked(weight, 4, blocks * block).reshape(n, blocks, block)
    zero = np.full((n, blocks), 8.0, np.float32) if zero_points is None else _unpacked(zero_points.reshape(n, -1), 4,
                                                                                       blocks)
    values = (codes - zero[:, :, None]) * scales.reshape(n, blocks)[:, :, None].astype(np.float32)
    padded = np.zeros((n, -(-k // block_8) * block_8), np.float32)
    padded[:, :k] = values.reshape(n, -1)[:, :k]
    padded = padded.reshape(n, -1, block_8)
    step = np.abs(padded).max(axis=-1) / 127.0
    step[step == 0] = 1.0
    codes_8 = np.clip(np.rint(padded / step[:, :, None]), -127, 127) + 128
    return codes_8.astype(np.uint8), step.astype(np.float32)


def _as_8_bit(model, node, store) -> bool:
    """Re-express 4-bit ``node`` in 8 bits (:func:`requantized`), its weights appended to ``store``; False when its
    weights, scales or zero points are not initializers of ``model`` or it has a group index or bias."""
    import onnx

    initializers = {t.name: t for t in model.graph.initializer}
    inputs = list(node.input)
    if not 3 <= len(inputs) <= 4 or not all(name in initializers for name in inputs[1:]) or (
            initializers[inputs[2]].data_type != onnx.TensorProto.FLOAT):
        return False
    weight, scales = store.read(initializers[inputs[1]]), store.read(initializers[inputs[2]])
    zero_points = store.read(initializers[inputs[3]]) if len(inputs) == 4 else None
    codes, steps = requantized(weight, scales, zero_points, _attribute(node, "K", 0), _attribute(node, "block_size", 32))
    name = node.name + "/prompt8"
    tensors = [store.write(f"{name}.weight", codes), store.write(f"{name}.scales", steps)]
    model.graph.initializer.extend(tensors)
    del node.input[1:]
    node.input.extend(t.name for t in tensors)
    changed = {"bits": 8, "block_size": PROMPT_BLOCK, "accuracy_level": INT8_COMPUTE}
    kept = [a for a in node.attribute if a.name not in changed]
    del node.attribute[:]
    node.attribute.extend([*kept, *(onnx.helper.make_attribute(key, value) for key, value in changed.items())])
    return True


def write_prompt_graph(graph: Path, target: Path, prompt_bits: int = PROMPT_BITS[0]) -> bool:
    """``graph`` with its INT4 ``MatMulNBits`` in int8 compute re-expressed for the prompt, written to ``target``.

    Only ``bits`` 4 nodes at ``accuracy_level`` 4 that multiply the prompt's rows change: with ``prompt_bits`` 8
    each becomes an 8-bit node in blocks of :data:`PROMPT_BLOCK` in int8 compute, its weights in
    :data:`PROMPT_DATA` beside ``target`` (one whose weights are not the graph's initializers, and every one with
    ``prompt_bits`` 4: FP32 compute, ``accuracy_level`` 0, on the build's own weights). 8-bit ones (an INT8 build, a mixed recipe's 8-bit layers,
    LM head) are left as they are, and so is a head reading only the last position
    (:data:`ONE_ROW`): one row is a decode step's shape. The graph's own weights file is shared.

    Returns:
        Whether it was written: not when ``graph`` has no such node (nothing would change).
    """
    import onnx

    from slmops.toolkit.weights.weight_store import WeightStore

    model = onnx.load(str(graph), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"
             and _attribute(n, "bits", 4) == 4 and _attribute(n, "accuracy_level", 0) == INT8_COMPUTE
             and n.input[0] != ONE_ROW]
    if not nodes:
        return False
    data = target.parent / PROMPT_DATA
    data.unlink(missing_ok=True)
    store = WeightStore(graph.parent, data)
    try:
        for node in nodes:
            if prompt_bits == 4 or not _as_8_bit(model, node, store):
                kept = [a for a in node.attribute if a.name != "accuracy_level"]
                del node.attribute[:]
                node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", FP32_COMPUTE)])
    finally:
        store.close()
    if not store.stored:
        data.unlink()
    else:  # the 4-bit initializers no node reads any more
        used = {name for node in model.graph.node for name in node.input}
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    target.unlink(missing_ok=True)  # a hard link to another folder's file is replaced, not written through
    onnx.save(model, str(target))
    return True


def _io_names(graph: Path) -> tuple[list[str], list[str]]:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def _plain_cpu_decoder(genai_config: dict) -> bool:
    """A model type in :data:`PLAIN_DECODER_TYPES`, one graph (not a pipeline), on the CPU."""
    model = genai_config["model"]
    decoder = model["decoder"]
    return model.get("type") in PLAIN_DECODER_TYPES and not decoder.get("pipeline") and not decoder.get(
        "session_options", {}).get("provider_options")


def serve_graphs(folder: Path, genai_config: dict, prompt_bits: int = PROMPT_BITS[0]) -> bool:
    """Registration's graph edits on a staged CPU ``folder``: fused projections, then the prompt graph.

    Sibling ``MatMulNBits`` (an MLP's gate and up projections) are fused in the served graph and
    in :data:`~slmops.toolkit.weights.lm_head.ALL_POSITIONS` when there is one
    (:mod:`slmops.toolkit.stages.register_fuse`: the same values, fewer kernel calls per token);
    then :func:`serve_prompt_graph`, whose prompt graph is made from the fused graph (its projections in
    ``prompt_bits``, :data:`PROMPT_BITS`).

    Returns:
        Whether ``genai_config`` became a pipeline (:func:`serve_prompt_graph`).
    """
    if _plain_cpu_decoder(genai_config):
        filename = genai_config["model"]["decoder"].get("filename", "model.onnx")
        fuse_siblings(folder, [name for name in (filename, ALL_POSITIONS) if (folder / name).is_file()])
    return serve_prompt_graph(folder, genai_config, prompt_bits)


def serve_prompt_graph(folder: Path, genai_config: dict, prompt_bits: int = PROMPT_BITS[0]) -> bool:
    """Give the staged ``folder`` :data:`PROMPT_GRAPH` and make ``genai_config`` the two-stage pipeline.

    Left as it is (returns False) when the model type is not in :data:`PLAIN_DECODER_TYPES` (a
    pipeline already, among others), the decoder runs on another execution provider than the CPU,
    or its graph has no INT4 ``MatMulNBits`` in int8 compute.
    ``genai_config`` is changed in place; the caller writes it.
    """
    model = genai_config["model"]
    decoder = model["decoder"]
    if not _plain_cpu_decoder(genai_config):
        return False
    filename = decoder.get("filename", "model.onnx")
    if not write_prompt_graph(folder / filename, folder / PROMPT_GRAPH, prompt_bits):
        return False
    inputs, outputs = _io_names(folder / filename)
    stage = {"inputs": inputs, "outputs": outputs}
    decoder["pipeline"] = [
        {PROMPT_STAGE: {"filename": PROMPT_GRAPH, **stage, "run_on_prompt": True, "run_on_token_gen": False}},
        {TOKEN_STAGE: {"filename": filename, **stage, "run_on_prompt": False, "run_on_token_gen": True}},
    ]
    decoder.setdefault("session_options", {}).update(STOP_SPINNING)  # both stages read the decoder's options
    model["type"] = PIPELINE_TYPE
    return True

