"""Registration's prompt graph: the prompt in FP32 compute, the generated tokens in int8 compute.

An INT4 ``MatMulNBits`` at ``accuracy_level`` 4 (the builder's default) quantizes its input to
int8 and multiplies in int8: the faster kernel for one token at a time (decode), the slower one
for a whole prompt, where ONNX Runtime's CPU kernel at ``accuracy_level`` 0 unpacks the weights
and runs an FP32 GEMM (an 8-bit ``MatMulNBits`` is the other way round: int8 compute is the
faster on a prompt too, so those keep it). The served folder keeps both: its graph for the generated tokens, and
:data:`PROMPT_GRAPH`, the same nodes and weights file with ``accuracy_level`` 0, for the prompt;
``genai_config.json`` becomes an ONNX Runtime GenAI ``decoder-pipeline`` that runs the first on
token generation only and the second on the prompt only (``run_on_prompt``/``run_on_token_gen``),
both on the same key/value cache. Each graph is its own ONNX Runtime session, so the weights are
unpacked twice in memory, and each has its own intra-op threads: their spinning stops when a run
returns (:data:`STOP_SPINNING`), so one session's idle threads do not take the cores the other runs on.
"""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.stages.register_fuse import fuse_siblings
from slmops.toolkit.weights.lm_head import ALL_POSITIONS, UNSQUEEZE

PROMPT_GRAPH = "model_prompt.onnx"
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


def write_prompt_graph(graph: Path, target: Path) -> bool:
    """``graph`` with its INT4 ``MatMulNBits`` in int8 compute set to FP32 compute, written to ``target``.

    Only ``bits`` 4 nodes at ``accuracy_level`` 4 that multiply the prompt's rows change (to 0);
    8-bit ones (an INT8 build, a mixed recipe's 8-bit layers, LM head) keep int8 compute, which is
    the faster for them on a prompt too, and so does a head reading only the last position
    (:data:`ONE_ROW`): one row is a decode step's shape, where FP32 compute unpacks the whole
    vocabulary's weights for a single row. The weights file is shared.

    Returns:
        Whether it was written: not when ``graph`` has no such node (nothing would change).
    """
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"
             and _attribute(n, "bits", 4) == 4 and _attribute(n, "accuracy_level", 0) == INT8_COMPUTE
             and n.input[0] != ONE_ROW]
    if not nodes:
        return False
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", FP32_COMPUTE)])
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


def serve_graphs(folder: Path, genai_config: dict) -> bool:
    """Registration's graph edits on a staged CPU ``folder``: fused projections, then the prompt graph.

    Sibling ``MatMulNBits`` (an MLP's gate and up projections) are fused in the served graph and
    in :data:`~slmops.toolkit.weights.lm_head.ALL_POSITIONS` when there is one
    (:mod:`slmops.toolkit.stages.register_fuse`: the same values, fewer kernel calls per token);
    then :func:`serve_prompt_graph`, whose prompt graph is made from the fused graph.

    Returns:
        Whether ``genai_config`` became a pipeline (:func:`serve_prompt_graph`).
    """
    if _plain_cpu_decoder(genai_config):
        filename = genai_config["model"]["decoder"].get("filename", "model.onnx")
        fuse_siblings(folder, [name for name in (filename, ALL_POSITIONS) if (folder / name).is_file()])
    return serve_prompt_graph(folder, genai_config)


def serve_prompt_graph(folder: Path, genai_config: dict) -> bool:
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
    if not write_prompt_graph(folder / filename, folder / PROMPT_GRAPH):
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

