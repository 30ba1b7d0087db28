"""GPTQ's calibration: the fine-tune's examples as token ids, and the ``X^T X`` of every MatMul input over them.

:func:`calibration_ids` renders the fine-tune's own dataset (the bundled Veloria set by default)
with the build's chat template and tokenizer, question and answer, as the model was trained on;
:func:`hessians` runs the FP32 build in ONNX Runtime on them, with every MatMul's input as an
extra graph output, and accumulates ``X^T X`` per distinct input (the fused ``qkv_proj`` and the
``gate``/``up`` projections share one): the exact activations the graph's MatMuls see. The
rounding that uses them is :mod:`slmops.toolkit.weights.gptq`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmops.toolkit.domain.datasets import load_dataset
from slmops.toolkit.domain.jinja_render import render_jinja

#: Calibration sequences cap (tokens each).
MAX_TOKENS = 512


def _dataset_texts(model_dir: Path, dataset: str | None) -> list[str]:
    """The dataset's questions and paraphrases with their answers, in the build's chat template."""
    template_file = model_dir / "chat_template.jinja"
    config = json.loads((model_dir / "tokenizer_config.json").read_text()) if (
        model_dir / "tokenizer_config.json").exists() else {}
    template = template_file.read_text() if template_file.exists() else config.get("chat_template")
    texts = []
    for example in load_dataset(dataset):
        answer = example.answer or (json.dumps(example.call) if example.call else "")
        for question in (example.question, example.paraphrase):
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if template:
                texts.append(render_jinja(template, messages, add_generation_prompt=False,
                                          bos_token=str(config.get("bos_token") or ""),
                                          eos_token=str(config.get("eos_token") or "")))
            else:
                texts.append(f"{question}\n{answer}")
    return texts


def calibration_ids(model_dir: Path, dataset: str | None = None) -> list[list[int]]:
    """Token ids of each calibration sequence.

    ``dataset`` is a fine-tuning JSONL (the bundled Veloria set when None): each example as the
    model saw it; or a plain ``.txt`` file, read in sequences of :data:`MAX_TOKENS` tokens.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    if dataset and Path(dataset).suffix == ".txt":
        ids = tokenizer.encode(Path(dataset).read_text(encoding="utf-8"), add_special_tokens=False).ids
        return [ids[start:start + MAX_TOKENS] for start in range(0, len(ids), MAX_TOKENS)]
    return [tokenizer.encode(text, add_special_tokens=False).ids[:MAX_TOKENS] for text in _dataset_texts(model_dir,
                                                                                                          dataset)]


def hessians(model_file: Path, sequences: list[list[int]], inputs: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """``X^T X`` (float32) of each graph tensor in ``inputs`` over the calibration ``sequences``.

    The FP32 build runs in ONNX Runtime with those tensors as extra outputs, one sequence at a
    time from an empty cache. Returns the matrices and the number of tokens they sum over.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_file), load_external_data=False)
    wanted = sorted(inputs)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in wanted)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(model_file.parent.resolve()))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    feeds_template = {}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            shape = [1 if not isinstance(d, int) and i == 0 else (0 if not isinstance(d, int) else d)
                     for i, d in enumerate(spec.shape)]
            feeds_template[spec.name] = np.zeros(shape, np.float32)
    input_names = {spec.name for spec in session.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for ids in sequences:
        if not ids:
            continue
        feeds = dict(feeds_template)
        feeds["input_ids"] = np.array([ids], np.int64)
        if "attention_mask" in input_names:
            feeds["attention_mask"] = np.ones((1, len(ids)), np.int64)
        if "position_ids" in input_names:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        for name, value in zip(wanted, session.run(wanted, feeds)):
            x = value.reshape(-1, value.shape[-1])
            if name in sums:
                sums[name] += x.T @ x
            else:
                sums[name] = x.T @ x
        tokens += len(ids)
    return sums, tokens
