"""Random models for the tests and benchmarks: a tiny Qwen2 or Llama with its own tokenizer, and a model of a
real configuration's shapes. Nothing is downloaded; the toolkit itself never imports this module.

The benchmarks import it from the checkout (``from tests.models import make_shaped_model``), with the
repository's top on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from slmops.toolkit.core import settings
from slmops.toolkit.domain.sources import CHATML_TEMPLATE

_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France. "
    "Berlin is the capital of Germany. Water boils at one hundred degrees Celsius. "
    "A small language model can run on a laptop. Quantization makes models smaller. "
    "ONNX Runtime runs models on many devices. 0 1 2 3 4 5 6 7 8 9 + - * / = ? ! , . "
)


def make_tiny_model(
    target: str | os.PathLike[str],
    *,
    model_type: str = "qwen2",
    seed: int = 0,
    chat_template: str = CHATML_TEMPLATE,
    tie_embeddings: bool = False,
    tool_tokens: bool = False,
    context: int = 512,
) -> Path:
    """Build a tiny random causal LM with a locally trained tokenizer (for fast tests).

    Two layers, hidden size 64, head_dim 16 (ONNX Runtime's attention kernels want a
    multiple of 16), a byte-level BPE tokenizer trained on a few sentences, and a chat
    template. Nothing is downloaded.

    Args:
        target: Folder to write (created).
        model_type: ``"qwen2"`` or ``"llama"``.
        seed: Seed for the random weights.
        chat_template: Jinja chat template stored with the tokenizer.
        tie_embeddings: Share one table between the embeddings and the LM head (as SmolLM2 does).
        tool_tokens: Add ``<tool_call>`` and ``</tool_call>`` tokens (as Qwen2.5's tokenizer has).
        context: ``max_position_embeddings`` (Foundry Local's tool protocol alone is about 1,000 of
            this tokenizer's tokens).

    Example:
        >>> make_tiny_model(tmp_path / "tiny").joinpath("config.json").is_file()
        True
    """
    settings.apply_offline_env()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _tiny_tokenizer(chat_template, tool_tokens)
    common = dict(  # noqa: C408 (keyword form reads like the config it is)
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=context,
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=tie_embeddings,
    )
    torch.manual_seed(seed)
    if model_type == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif model_type == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"model_type must be 'qwen2' or 'llama', not {model_type!r}")
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tiny_tokenizer(chat_template: str = CHATML_TEMPLATE, tool_tokens: bool = False):
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML's special tokens and ``chat_template``.

    Returns:
        ``(tokenizer, ids)``: a ``PreTrainedTokenizerFast`` and the ids of its special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(["<tool_call>", "</tool_call>"] if tool_tokens else [])]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    tokenizer.chat_template = chat_template
    return tokenizer, {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}


def make_shaped_model(target: str | os.PathLike[str], config: dict, *, dtype: str = "bfloat16", seed: int = 0,
                      shard_mb: int = 2000) -> Path:
    """Write a random-initialized model of a real configuration (shapes only, nothing downloaded).

    Weights are drawn tensor by tensor (normal, std 0.02) and written in safetensors shards
    of about ``shard_mb``, so a 4B model is written without ever holding it in memory. The
    tokenizer is the tiny local one: the model keeps its real vocabulary size (its table is
    larger than the tokenizer, as real checkpoints' tables often are).

    Args:
        target: Folder to write (created).
        config: ``config.json`` fields; ``model_type`` and ``architectures`` are required.
        dtype: Storage dtype of the weights (``bfloat16``, ``float16`` or ``float32``).
        seed: Seed for the random weights.
        shard_mb: Largest shard in MB.

    Example:
        >>> make_shaped_model(tmp_path / "m", {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
        ...                   "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1024}).is_dir()
        True
    """
    settings.apply_offline_env()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _tiny_tokenizer()
    fields = {k: v for k, v in config.items() if k != "model_type"}
    fields |= {"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
               "bos_token_id": ids["<|endoftext|>"], "dtype": dtype}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in AutoModelForCausalLM.from_config(hf_config).state_dict().items()}
    if hf_config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    plan: list[list[str]] = [[]]  # names per shard, planned first so the files can be named "-of-N"
    filled = 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * itemsize
        if plan[-1] and filled + nbytes > shard_mb * 1e6:
            plan.append([])
            filled = 0
        plan[-1].append(name)
        filled += nbytes
    generator = torch.Generator().manual_seed(seed)
    index: dict[str, str] = {}
    for number, names in enumerate(plan, 1):
        file = f"model-{number:05d}-of-{len(plan):05d}.safetensors" if len(plan) > 1 else "model.safetensors"
        shard = {name: (torch.ones(shapes[name]) if name.endswith("norm.weight")
                        else torch.randn(shapes[name], generator=generator) * 0.02).to(torch_dtype) for name in names}
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        index |= dict.fromkeys(shard, file)
        del shard
    if len(plan) > 1:
        total = sum(math.prod(shape) * itemsize for shape in shapes.values())
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": index}, indent=1))
    hf_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
