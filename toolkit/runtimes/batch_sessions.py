"""The batch engine's ONNX Runtime sessions: the token graph and, for a pipeline, the prompt graph.

A graph whose LM head registration pruned to the last position (:mod:`slmops.toolkit.weights.lm_head`) is
opened as a copy edited in memory whose ``Gather`` of the last position becomes a ``GatherND`` of each row's own
(:data:`LAST_POSITIONS`), so one prefill run can hold prompts of different lengths; the weights are read from
the folder as before.
"""

from __future__ import annotations

from pathlib import Path

from slmops.toolkit.runtimes.decode_settings import ModelSettings
from slmops.toolkit.weights import lm_head

#: ONNX Runtime's session option that stops a session's threads spinning once its run returns. The prompt graph
#: and the token graph are two sessions with a thread pool each; left spinning, one pool's threads hold the
#: cores while the other's run (and while the engine's Python picks tokens), which made prefill runs and
#: decode steps take up to twice as long under load (the benchmarks page).
SPIN_STOP = "session.force_spinning_stop"
#: The input the engine adds to a pruned graph: each row's last prompt position, ``[batch, 1]``.
LAST_POSITIONS = "slmops_last_positions"
#: The largest block of 8-bit ``MatMulNBits`` weights in int8 compute whose rows ONNX Runtime computes apart. In larger
#: blocks (registration's 8-bit prompt graph: 128) a row's products change slightly with the rows run beside it,
#: and greedy decoding can carry that to other tokens: prompts whose rest was prefilled on a kept prefix answered
#: otherwise than the whole prompt prefilled at once (the benchmarks page).
ROWS_APART_BLOCK = 32


def open_sessions(folder: Path, settings: ModelSettings) -> tuple[object, object, bool, bool]:
    """The sessions of a registered model folder, with its tuned thread count.

    Returns:
        The token graph's session (``model.onnx``); what prompts run on (a pipeline's prompt graph, as ONNX
        Runtime GenAI and Foundry Local run them, so greedy answers stay theirs; else the same session); whether
        the graphs take :data:`LAST_POSITIONS`; and whether the prompt graph's rows change each other's results
        (:func:`rows_coupled`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if settings.threads:
        options.intra_op_num_threads = settings.threads
    if settings.prompt_graph:  # two sessions, two thread pools: see SPIN_STOP
        options.add_session_config_entry(SPIN_STOP, "1")
    session, last_input = _session(folder / "model.onnx", options)
    if not settings.prompt_graph:
        return session, session, last_input, False
    prompt_graph = folder / settings.prompt_graph
    return session, _session(prompt_graph, options)[0], last_input, rows_coupled(prompt_graph)


def rows_coupled(graph_file: Path) -> bool:
    """Whether a run of ``graph_file`` may give a row other results beside other rows than alone: it has an 8-bit
    ``MatMulNBits`` in int8 compute in blocks over :data:`ROWS_APART_BLOCK`."""
    import onnx

    def attribute(node, name: str, default: int) -> int:
        return next((a.i for a in node.attribute if a.name == name), default)

    nodes = [n for n in onnx.load(str(graph_file), load_external_data=False).graph.node if n.op_type == "MatMulNBits"]
    return any(attribute(n, "bits", 4) == 8 and attribute(n, "accuracy_level", 0) == 4
               and attribute(n, "block_size", 32) > ROWS_APART_BLOCK for n in nodes)


def _session(graph_file: Path, options: object) -> tuple[object, bool]:
    """An ONNX Runtime session of ``graph_file``, edited to take each row's last position where its LM head is
    pruned (:func:`~slmops.toolkit.weights.lm_head.gather_each_row`); and whether it takes :data:`LAST_POSITIONS`."""
    import onnxruntime as ort

    edited = lm_head.gather_each_row(graph_file, LAST_POSITIONS)
    if edited is not None:  # the edited copy reads its weights where the graph file's own path leads
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(graph_file.resolve().parent))
    return ort.InferenceSession(str(graph_file) if edited is None else edited, options,
                                providers=["CPUExecutionProvider"]), edited is not None
