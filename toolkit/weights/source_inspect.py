"""A source model loaded as transformers loads it, without its weights' data: what the build would meet, met first.

The builder and the parity check both load the folder with transformers (``AutoConfig``,
``GenerationConfig``, ``AutoTokenizer``, ``AutoModelForCausalLM``); a folder they cannot load
used to fail there, after minutes of loading a real model. :func:`check_loads` does the same
loads before any work, the model on the meta device (no memory, no data read), and compares the
parameters it builds from ``config.json`` with the tensors the weights' headers list, so a
config that does not describe its weights is refused in one line naming the field.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from slmops.toolkit.core import settings
from slmops.toolkit.core.errors import InconsistentCheckpointError, ModelFolderError
from slmops.toolkit.domain.sources import TensorInfo, stores_lm_head

#: Tensor-name parts and the ``config.json`` fields that size them (for the message on a mismatch).
_SIZED_BY = (("qkv_proj", "num_attention_heads, num_key_value_heads and head_dim"),
             ("q_proj", "num_attention_heads and head_dim"), ("o_proj", "num_attention_heads and head_dim"),
             ("k_proj", "num_key_value_heads and head_dim"), ("v_proj", "num_key_value_heads and head_dim"),
             ("mlp.", "intermediate_size"), ("embed_tokens", "vocab_size and hidden_size"),
             ("lm_head", "vocab_size and hidden_size"), ("norm", "hidden_size and head_dim"))
#: Tensors of another modality in a multimodal checkpoint (the language model is what is converted).
_OTHER_MODALITIES = ("vision", "visual", "audio", "multi_modal_projector")
T = TypeVar("T")


def check_loads(folder: str | os.PathLike[str], tensors: dict[str, TensorInfo]) -> None:
    """Load ``folder``'s config, generation config and tokenizer as transformers does, and build its model on the meta
    device against ``tensors`` (the weights' headers).

    Refused: a config, generation config or tokenizer transformers cannot load; ``model_type`` naming another
    family than ``architectures``; a model it cannot build from the config; a tokenizer with more tokens than the
    embedding table has rows; and weights that lack a parameter the model builds (it would start from random
    numbers), hold one it has no place for (dropped without a word), or store one in another shape. Only the
    shapes are compared for a family whose checkpoints transformers renames as it loads them (Gemma 3's
    multimodal one, say), and tensors of another modality are left out.

    Args:
        folder: A Hugging Face model folder that passed
            :func:`~slmops.toolkit.weights.checkpoints.inspect_source`.
        tensors: Its weights' names, dtypes and shapes (:func:`~slmops.toolkit.weights.checkpoints.read_tensors`).

    Raises:
        ModelFolderError: a file transformers cannot load (the message names it).
        InconsistentCheckpointError: the config contradicts the weights or the tokenizer (the message names the field).
    """
    settings.apply_offline_env()
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(folder)
    with _quiet():
        config = _load(folder, "config.json", lambda: AutoConfig.from_pretrained(folder))
        if (folder / "generation_config.json").is_file():
            _load(folder, "generation_config.json", lambda: GenerationConfig.from_pretrained(folder))
        tokenizer = _load(folder, "the tokenizer (tokenizer.json, tokenizer_config.json)",
                          lambda: AutoTokenizer.from_pretrained(folder))
        architecture = (getattr(config, "architectures", None) or [""])[0]
        named = getattr(transformers, architecture, None)
        family = getattr(getattr(named, "config_class", None), "model_type", None)
        if family and family != config.model_type:
            raise InconsistentCheckpointError(
                folder, f"config.json says model_type {config.model_type!r}, but architectures {architecture} is a "
                f"{family!r} model (transformers would load another model than the builder builds)",
                f'Set "model_type": "{family}" in config.json (or save the config that came with these weights).')
        text = config.get_text_config()
        rows = getattr(text, "vocab_size", None)
        if isinstance(rows, int) and len(tokenizer) > rows:
            raise InconsistentCheckpointError(
                folder, f"the tokenizer has {len(tokenizer)} tokens, but the model's vocab_size is {rows} (ids from "
                f"{rows} up would index past the embedding table)",
                "Resize the model to its tokenizer (model.resize_token_embeddings(len(tokenizer))) and save both again.")
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception as exc:  # whatever transformers raises, the build would raise later
            raise InconsistentCheckpointError(
                folder, f"transformers cannot build {architecture or 'the model'} from config.json ({_first_line(exc)})",
                "Fix the field it names in config.json, or save the config that came with these weights.") from exc
    _compare(folder, model, config, tensors)


def _compare(folder: Path, model: object, config: object, tensors: dict[str, TensorInfo]) -> None:
    """Refuse weights whose tensors differ from the parameters ``model`` (built from ``config``) has."""
    from transformers import conversion_mapping

    name = type(model).__name__
    parameters = {key: tuple(value.shape) for key, value in model.named_parameters()}
    known = set(model.state_dict()) | set(parameters)
    stored = {key: info.shape for key, info in tensors.items() if not any(m in key for m in _OTHER_MODALITIES)}
    for key in sorted(set(stored) & set(parameters)):
        if tuple(stored[key]) != parameters[key]:
            fields = next((f for part, f in _SIZED_BY if part in key), "the sizes")
            raise InconsistentCheckpointError(
                folder, f"the weights store {key} as {list(stored[key])}, but {name} as config.json describes it "
                f"({fields}) has it {list(parameters[key])}",
                f"Set {fields} in config.json to the weights' sizes, or save the config that came with these weights.")
    prefix = getattr(model, "base_model_prefix", "")
    renamed = (conversion_mapping.get_checkpoint_conversion_mapping(getattr(config, "model_type", "")) is not None
               or bool(getattr(model, "_checkpoint_conversion_mapping", None))
               or (prefix and not any(key.startswith(f"{prefix}.") for key in stored)))
    if renamed:  # transformers renames these checkpoints' tensors as it loads them: only the shapes compare
        return
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    extra = sorted(key for key in stored if key not in known and "rotary_emb.inv_freq" not in key
                   and not any(p.search(key) for p in ignored))
    if extra:
        biases = [key for key in extra if key.endswith(".bias")]
        fix = ("Set attention_bias (or mlp_bias) true in config.json if the model has these biases, or save the "
               "config that came with these weights." if biases else
               "Save the config.json that came with these weights, or save the model again with save_pretrained.")
        raise InconsistentCheckpointError(
            folder, f"the weights hold {len(extra)} tensor(s) {name} as config.json describes it has no place for "
            f"({_some(extra)}): they would be dropped without a word", fix)
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))
    missing = sorted(key for key in parameters if key not in stored and not (tied and stores_lm_head([key])))
    if missing:
        raise InconsistentCheckpointError(
            folder, f"the weights lack {len(missing)} tensor(s) {name} builds from config.json ({_some(missing)}): "
            "transformers and the builder would start them from random numbers",
            "Copy in the weight files that hold them, or save the model again with save_pretrained.")


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _load(folder: Path, what: str, load: Callable[[], T]) -> T:
    """``load()``, refusing in one line what transformers cannot load from ``folder``."""
    try:
        return load()
    except Exception as exc:  # whatever transformers raises, the build would raise later
        fix = (f"Fix {what.split(' (')[0]} or save it again with save_pretrained"
               if what != "config.json" else "Fix the field it names in config.json, or save the config that came "
               "with these weights")
        raise ModelFolderError(folder, f"transformers cannot load {what} ({_first_line(exc)})", fix + ".") from exc


def _first_line(exc: BaseException) -> str:
    """An exception in one short line: its first line, or its cause when the first only introduces it.

    transformers' config validation says ``Validation error for field 'x':`` and then, on the next
    line, ``TypeError: Field 'x' expected int, got NoneType``; the second is the one to read.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        text = lines[-1]
    else:
        text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip(": ")
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' warnings silenced while the folder is checked (its checks are the toolkit's messages)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)

