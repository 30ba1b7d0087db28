"""The checks a source model's ``config.json`` must pass against its weights' headers, before any work.

Pure: each reads a parsed ``config.json`` and the tensors' names, dtypes and shapes
(:class:`~slmops.toolkit.domain.sources.TensorInfo`), and raises a typed error whose message names the
field or file to fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from slmops.toolkit.core.errors import InconsistentCheckpointError, QuantizedCheckpointError
from slmops.toolkit.domain.sources import TensorInfo, stores_lm_head, text_config

_FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}
#: Tensor-name endings that only quantized checkpoints store, and whose they are.
_QUANT_MARKS = {".absmax": "bitsandbytes", ".quant_map": "bitsandbytes", ".nested_absmax": "bitsandbytes",
                ".SCB": "bitsandbytes 8-bit", ".qweight": "GPTQ/AWQ", ".qzeros": "GPTQ/AWQ", ".g_idx": "GPTQ",
                ".weight_scale": "FP8", ".weight_packed": "compressed-tensors", ".weight_scale_inv": "FP8"}


def quantization(config: dict, tensors: dict[str, TensorInfo]) -> str:
    """How a checkpoint is already quantized, in words (``""`` for plain 16/32-bit weights).

    From ``config.json``'s ``quantization_config`` (``quant_method``, and bitsandbytes' bits),
    else from the weights: the extra tensors bitsandbytes, GPTQ, AWQ and FP8 store beside a
    weight (``.absmax``, ``.quant_state.*``, ``.qweight``, ``.qzeros``, ``.scales``, ...), or
    a layer's ``.weight`` stored as integers or 8-bit floats.
    """
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    if isinstance(quant, dict) and quant:
        method = str(quant.get("quant_method") or "unknown method")
        if method == "bitsandbytes" or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
            bits = "4-bit" if quant.get("load_in_4bit") else "8-bit" if quant.get("load_in_8bit") else ""
            return f"bitsandbytes {bits}".strip()
        bits = quant.get("bits") or quant.get("w_bit")
        return f"{method} {bits}-bit" if bits else method
    for name, info in tensors.items():
        if ".quant_state." in name:
            return "bitsandbytes 4-bit"
        for mark, method in _QUANT_MARKS.items():
            if name.endswith(mark):
                return method
        if name.endswith(".weight") and len(info.shape) == 2 and info.dtype not in _FLOAT_DTYPES:
            return f"{info.dtype} weights"
    return ""


def original_model_hint(folder: Path, config: dict) -> str:
    """A guess at the 16-bit model a quantized checkpoint was made from (``""`` when there is none).

    ``config.json``'s ``_name_or_path`` when it names something else, else the folder's name
    without the usual quantization suffix (``Llama-3.2-1B-Instruct-bnb-4bit`` gives
    ``Llama-3.2-1B-Instruct``).
    """
    named = str(config.get("_name_or_path") or "")
    if named and Path(named).expanduser().resolve() != folder.expanduser().resolve():
        return named
    stripped = re.sub(r"[-_.](unsloth[-_])?(bnb|4bit|8bit|gptq|awq|int4|int8|nf4|fp8|w4a16|w8a8|quantized)\b.*$", "",
                      folder.expanduser().resolve().name, flags=re.IGNORECASE)
    return stripped if stripped and stripped != folder.expanduser().resolve().name else ""


def check_quantization(folder: Path, config: dict, tensors: dict[str, TensorInfo]) -> None:
    """Refuse an already-quantized checkpoint, naming the 16-bit model to convert instead.

    Every route here exports the FP32 graph from plain weights and quantizes it itself
    (``--precision int8``/``int4``). The pinned builder reads only GPTQ, AWQ, Quark and Olive
    packings, and only into an INT4 graph of its own (no FP32 build to check against
    transformers, whose GPTQ/AWQ kernels are not installed here); bitsandbytes, FP8 and the
    rest it cannot read at all. Starting from the 16-bit model gives the same precisions with
    a build that is checked.

    Raises:
        QuantizedCheckpointError: the checkpoint is already quantized.
    """
    method = quantization(config, tensors)
    if not method:
        return
    original = original_model_hint(folder, config)
    raise QuantizedCheckpointError(
        folder, method, original,
        f"{folder} is an already-quantized checkpoint ({method}): this toolkit converts 16- or 32-bit weights and "
        "quantizes them itself (--precision int8 or int4). Convert the 16-bit model it was quantized from instead"
        + (f" ({original}, saved with save_pretrained)." if original else " (saved with save_pretrained)."))


#: ``config.json`` fields that are whole numbers above zero when present (the language model's own, or ``text_config``'s).
_COUNT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions")


def check_fields(folder: Path, config: dict) -> None:
    """Refuse a ``config.json`` whose fields have the wrong type, before anything reads them.

    ``architectures`` is a non-empty list of names, ``model_type`` a name, the sizes in
    :data:`_COUNT_FIELDS` whole numbers above zero, ``tie_word_embeddings`` true or false.
    (Found by the property test: ``"hidden_size": "x"`` or ``"architectures": 5`` ended in
    ``unexpected error: ValueError``.)

    Raises:
        InconsistentCheckpointError: a field of the wrong type (the message names it and what it must be).
    """
    def refuse(key: str, value: object, expected: str) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InconsistentCheckpointError(folder, f"config.json's {key} is {shown}, not {expected}",
                                          "Save the config.json that came with these weights (save_pretrained).")

    architectures = config.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or not architectures
                                      or not all(isinstance(a, str) and a for a in architectures)):
        refuse("architectures", architectures, 'a list of class names (e.g. ["LlamaForCausalLM"])')
    if "model_type" in config and not (isinstance(config["model_type"], str) and config["model_type"]):
        refuse("model_type", config["model_type"], 'a model type name (e.g. "llama")')
    text = config.get("text_config")
    if text is not None and not isinstance(text, dict):
        refuse("text_config", text, "an object")
    for where, fields in (("", config), ("text_config.", text or {})):
        for key in _COUNT_FIELDS:
            value = fields.get(key)
            if value is not None and (type(value) is not int or value < 1):
                refuse(where + key, value, "a whole number above zero")
        tied = fields.get("tie_word_embeddings")
        if tied is not None and not isinstance(tied, bool):
            refuse(where + "tie_word_embeddings", tied, "true or false")
    if "quantization_config" in config and not (isinstance(config["quantization_config"], dict)
                                                and config["quantization_config"]):
        # The builder reads quantization_config["quant_method"] whenever the field is there.
        raise InconsistentCheckpointError(folder, f"config.json has quantization_config "
                                          f"{config['quantization_config']!r}, which names no quantization",
                                          "Remove quantization_config from config.json (the weights are plain).")
    check_shape_fields(folder, text_config(config))


def check_shape_fields(folder: Path, fields: dict) -> None:
    """Refuse attention and RoPE fields no model can be built from (checked after their types, by :func:`check_fields`).

    ``num_key_value_heads`` must divide ``num_attention_heads`` (each key/value head serves a whole group of
    query heads), ``hidden_size`` must split into ``num_attention_heads`` heads when ``head_dim`` is left out,
    layers that slide need a window, and RoPE's ``rope_theta`` is a number. Each was found failing after the build
    (in the builder, or in transformers' forward pass of the parity check).

    Raises:
        InconsistentCheckpointError: the fields contradict each other (the message names them and the fix).
    """
    heads, groups, width = (fields.get(k) for k in ("num_attention_heads", "num_key_value_heads", "hidden_size"))
    if isinstance(heads, int) and isinstance(groups, int) and heads % groups:
        raise InconsistentCheckpointError(
            folder, f"config.json says num_key_value_heads {groups}, which does not divide num_attention_heads {heads}",
            "Save the config.json that came with these weights (each key/value head serves a whole number of "
            "query heads).")
    if isinstance(heads, int) and isinstance(width, int) and fields.get("head_dim") is None and width % heads:
        raise InconsistentCheckpointError(
            folder, f"config.json sets no head_dim, and hidden_size {width} does not split into num_attention_heads "
            f"{heads} heads", "Set head_dim in config.json (the weights' q_proj rows over num_attention_heads).")
    types = fields.get("layer_types")
    window = fields.get("sliding_window")
    if isinstance(types, list) and "sliding_attention" in types and not (type(window) is int and window > 0):
        raise InconsistentCheckpointError(
            folder, f"config.json's layer_types has sliding_attention layers, but sliding_window is {window!r}",
            "Set sliding_window in config.json to the window the model was trained with, or make those layers "
            "full_attention.")
    for key in ("rope_parameters", "rope_scaling"):
        rope = fields.get(key)
        entries = [rope] if isinstance(rope, dict) and "rope_theta" in rope else (
            [v for v in rope.values() if isinstance(v, dict)] if isinstance(rope, dict) else [])
        for entry in entries:
            theta = entry.get("rope_theta", 1.0)
            if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
                raise InconsistentCheckpointError(
                    folder, f"config.json's {key} has rope_theta {theta!r}, not a number above zero",
                    "Set rope_theta to the model's RoPE base (10000.0 unless the model card says otherwise).")
    theta = fields.get("rope_theta", 1.0)
    if isinstance(theta, bool) or not isinstance(theta, int | float) or theta <= 0:
        raise InconsistentCheckpointError(folder, f"config.json's rope_theta is {theta!r}, not a number above zero",
                                          "Set rope_theta to the model's RoPE base, or remove the field.")


def check_consistency(folder: Path, config: dict, tensors: dict[str, TensorInfo],
                      architecture_ties: Callable[[dict], bool | None] = lambda fields: None) -> None:
    """Refuse a ``config.json`` that contradicts the weights, from the headers alone.

    Checked where the weights use the usual names (``...embed_tokens.weight``,
    ``...layers.N.``, ``lm_head.weight``): ``vocab_size`` against the embedding table's rows,
    ``hidden_size`` against its width, ``num_hidden_layers`` against the layers stored, and
    ``tie_word_embeddings: false`` (or left out where the architecture's default is false, as
    Llama's is) with no ``lm_head.weight`` (transformers and the builder would both start the LM
    head from random numbers, without a word).

    Args:
        folder: The model folder (for messages).
        config: Its parsed ``config.json``.
        tensors: Its weights' headers.
        architecture_ties: The architecture's default ``tie_word_embeddings`` for these fields
            (None when unknown), asked only when the config leaves it out and no head is stored.

    Raises:
        InconsistentCheckpointError: a field contradicts the weights (the message names the fix).
    """
    fields = text_config(config)
    embeddings = sorted((name for name in tensors if name.endswith("embed_tokens.weight")
                         and not any(part in name for part in ("vision", "audio", "visual"))),
                        key=lambda name: name.count("."))
    if not embeddings:
        return
    table = tensors[embeddings[0]].shape
    if len(table) != 2:
        return
    rows, width = table
    vocab, hidden = fields.get("vocab_size"), fields.get("hidden_size")
    if isinstance(vocab, int) and vocab != rows:
        raise InconsistentCheckpointError(
            folder, f"config.json says vocab_size {vocab}, but the embedding table {embeddings[0]} has {rows} rows",
            f"Set vocab_size to {rows} in config.json (or resize the model with resize_token_embeddings and "
            "save it again).")
    if isinstance(hidden, int) and hidden != width:
        raise InconsistentCheckpointError(
            folder, f"config.json says hidden_size {hidden}, but the embedding table {embeddings[0]} is {width} wide",
            "The config belongs to another model size: save the config that came with these weights.")
    prefix = embeddings[0].removesuffix("embed_tokens.weight") + "layers."
    stored = {int(match.group(1)) for name in tensors if (match := re.match(re.escape(prefix) + r"(\d+)\.", name))}
    layers = fields.get("num_hidden_layers")
    extra = int(fields.get("num_nextn_predict_layers") or 0)
    if stored and isinstance(layers, int) and len(stored) not in (layers, layers + extra):
        raise InconsistentCheckpointError(
            folder, f"config.json says num_hidden_layers {layers}, but the weights hold {len(stored)} layers",
            f"Set num_hidden_layers to {len(stored)} in config.json if the model was pruned, or save the config "
            "that came with these weights.")
    has_head = stores_lm_head(tensors)
    tied = fields.get("tie_word_embeddings")
    if tied is None and not has_head:  # left out: the architecture's own default decides (False for Llama)
        tied = architecture_ties(fields)
    if tied is False and not has_head:
        raise InconsistentCheckpointError(
            folder, "config.json says tie_word_embeddings false, but the weights hold no lm_head.weight (the LM head "
            "would start from random numbers)",
            "Set tie_word_embeddings to true in config.json if the model shares its embedding table with its LM "
            "head, or save the model again with its lm_head.weight.")


#: The dtypes a ``config.json`` may name for plain 16/32-bit weights (transformers loads them in it), by safetensors' names.
_CONFIG_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def check_dtype(folder: Path, config: dict, tensors: dict[str, TensorInfo]) -> None:
    """Refuse a ``config.json`` whose ``torch_dtype`` (or ``dtype``) is not a float type plain weights load in.

    transformers and the builder load the weights in that dtype: one the weights are not in and
    cannot be cast to (an 8-bit float over FP32 weights, an integer type, a misspelling) fails
    deep in the builder (``couldn't find storage object Float8_e4m3fnStorage``). Already-quantized
    weights were refused before (:func:`check_quantization`), so the weights here are 16/32-bit floats.

    Raises:
        InconsistentCheckpointError: the dtype field names no 16/32-bit float type (the message names the weights' own).
    """
    stored = sorted({info.dtype for info in tensors.values() if info.dtype in _FLOAT_DTYPES})
    own = next((name for name, code in _CONFIG_DTYPES.items() if [code] == stored), "float32")
    for where, fields in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(fields, dict):
            continue
        for key in ("torch_dtype", "dtype"):
            value = fields.get(key)
            if value is None or value == "auto" or (isinstance(value, str) and value.removeprefix("torch.")
                                                    in _CONFIG_DTYPES):
                continue
            raise InconsistentCheckpointError(
                folder, f"config.json says {where}{key} {value!r}, but the weights are stored as "
                f"{'/'.join(stored) or 'floats'}, and only float32, float16 or bfloat16 weights convert",
                f'Set "{key}": "{own}" in config.json (the weights\' own dtype).')
