"""PEFT LoRA adapters as a conversion source: checked against their base, then merged into it.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Its base
is the local folder its config names (``base_model_name_or_path``) or the one given with
``--base``. Everything is checked from the files' headers before anything is written: the
adapter kind (only LoRA merges into plain weights), a reachable base, and that every
adapted module exists in the base with the shapes the adapter's matrices need (the base's
weights may be safetensors or a weights-only ``pytorch_model*.bin``). A QLoRA adapter's
4-bit base is refused naming the 16-bit base to pass instead. An adapter trained with added
tokens (embedding table and LM head resized, both saved through ``modules_to_save``) is
merged into the base resized to the adapter's vocabulary first; one whose new rows were not
saved, or whose tokenizer does not fit its table, is refused naming both sizes.

Trainers save the tokenizer and chat template they trained with next to the adapter
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
``chat_template.jinja``, ``generation_config.json``): those win over the base's in the merged
folder, and the merge record (the manifest's ``adapter`` entry) says which files were used.

Pure: the records and the checks on names and shapes. The adapter is read and checked by
:func:`slmops.toolkit.weights.adapter_inspect.inspect_adapter` and merged by peft's own
``merge_and_unload`` on the FP32 base, in a child process
(:mod:`slmops.toolkit.weights.adapter_merge`); each build is checked against it in
transformers (:mod:`slmops.toolkit.runtimes.reference`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.core.errors import InputError, ModelFolderError
from slmops.toolkit.domain.results.merge import MergeRecord, TokenizerOrigin, VocabSizes
from slmops.toolkit.domain.sources import TensorInfo, stores_lm_head

ADAPTER_CONFIG = "adapter_config.json"
MERGE_RECORD = "merge.json"
MERGE_ROUTE = "peft merge_and_unload (FP32)"
#: Token positions of the reference text whose logits the merge keeps for the FP32 check.
CHECK_TOKENS = 64
#: Files of an adapter folder that win over the base's in the merged model (the tokenizer and template it trained with).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
GENERATION_CONFIG = "generation_config.json"


@dataclass(frozen=True)
class AdapterSource:
    """A checked LoRA adapter and its base.

    Attributes:
        path: The adapter folder.
        base: The base model's Hugging Face folder.
        rank: LoRA rank ``r``.
        alpha: LoRA alpha.
        target_modules: The base's modules it adapts.
        fingerprint: SHA-256 prefix of the adapter's files.
        modules_to_save: The base's modules it replaces whole (``embed_tokens``, ``lm_head``, ...).
        vocab_size: The adapter's vocabulary when it resized the base's (0: the base's is kept).
        base_vocab_size: The base's vocabulary (its embedding table's rows; 0 when unknown).
        own_files: The adapter folder's tokenizer, template and generation files, which win over the base's.
        rank_pattern: Ranks of the modules (by peft's name pattern) whose rank is not :attr:`rank`.
        alpha_pattern: Alphas of the modules (by peft's name pattern) whose alpha is not :attr:`alpha`.
        use_rslora: Rank-stabilized LoRA: the update is scaled by alpha / sqrt(rank), not alpha / rank.
    """

    path: Path
    base: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    fingerprint: str
    modules_to_save: tuple[str, ...] = ()
    vocab_size: int = 0
    base_vocab_size: int = 0
    own_files: tuple[str, ...] = ()
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    use_rslora: bool = False

    def describe(self) -> MergeRecord:
        """The adapter as the manifest's ``adapter`` entry records it (before any merge check)."""
        return MergeRecord(str(self.path), self.fingerprint, str(self.base), self.rank, self.alpha,
                           dict(self.rank_pattern), dict(self.alpha_pattern), self.use_rslora, self.target_modules,
                           self.modules_to_save, VocabSizes(self.base_vocab_size, self.vocab_size or self.base_vocab_size),
                           self.own_files, MERGE_ROUTE)


def is_adapter(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a PEFT adapter folder (it has ``adapter_config.json``)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def config_number(folder: Path, config: dict, key: str, kind: type) -> float:
    """``config[key]`` as a positive ``kind`` (0 when absent).

    Raises:
        ModelFolderError: the value is not a positive number.
    """
    value = config.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or int(value) != value and kind is int:
        raise ModelFolderError(folder, f"adapter_config.json's {key} is {value!r}, not a positive "
                               f"{'whole number' if kind is int else 'number'}", "Re-save the adapter with peft.")
    return kind(value)


def config_pattern(folder: Path, config: dict, key: str, kind: type) -> tuple[tuple[str, float], ...]:
    """``config[key]`` (peft's ``rank_pattern``/``alpha_pattern``: module name pattern -> number) as sorted pairs.

    Raises:
        ModelFolderError: it is not an object of positive numbers.
    """
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise ModelFolderError(folder, f"adapter_config.json's {key} is not an object", "Re-save the adapter with peft.")
    return tuple(sorted((str(name), config_number(folder, value, name, kind)) for name in value))


def own_files(folder: Path) -> tuple[str, ...]:
    """The tokenizer, template and generation files an adapter folder carries (they win over the base's)."""
    return tuple(name for name in (*TOKENIZER_FILES, *TEMPLATE_FILES, GENERATION_CONFIG) if (folder / name).is_file())


def has_tokenizer(names: tuple[str, ...]) -> bool:
    """Whether these files make a tokenizer on their own (not just a template or generation settings)."""
    return "tokenizer.json" in names or "tokenizer.model" in names or {"vocab.json", "merges.txt"} <= set(names)


def _tokenizer_size(folder: Path) -> int:
    """The number of token ids a folder's ``tokenizer.json`` can produce (0 when it has none or it is unreadable)."""
    try:
        data = json.loads((folder / "tokenizer.json").read_text())
        ids = [int(i) for i in ((data.get("model") or {}).get("vocab") or {}).values() if isinstance(i, int)]
        ids += [int(t["id"]) for t in data.get("added_tokens") or [] if isinstance(t, dict) and "id" in t]
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return 0
    return max(ids, default=-1) + 1


def _module_key(name: str) -> str:
    """An adapter's full-module tensor name as the base names it.

    peft saves a ``modules_to_save`` module as ``base_model.model.<name>.weight`` (older
    versions) or beside ``.modules_to_save.`` and ``.original_module.`` copies (0.17 on).
    """
    key = name.removeprefix("base_model.model.")
    for part in (".modules_to_save.default.", ".modules_to_save.", ".original_module.", ".base_layer."):
        key = key.replace(part, ".")
    return key


def saved_modules(adapter: dict[str, list[int]]) -> set[str]:
    """The short names of the modules an adapter saves whole (``modules_to_save``)."""
    keys = {_module_key(name) for name in adapter if "lora_" not in name and ".original_module." not in name}
    return {key.rsplit(".", 2)[-2] for key in keys if key.endswith(".weight")}


def _rows(tensors: dict[str, list[int]], ending: str) -> int:
    """Rows of the first 2-D tensor whose name ends with ``ending`` (0 when there is none)."""
    return next((shape[0] for name, shape in sorted(tensors.items()) if name.endswith(ending) and len(shape) == 2), 0)


def check_vocabulary(folder: Path, adapter: dict[str, list[int]], base_tensors: dict[str, TensorInfo], base: Path,
                      own: tuple[str, ...]) -> tuple[int, int]:
    """Check an adapter that resized the base's vocabulary (added tokens), from the headers alone.

    Its saved embedding table (``modules_to_save``) sets the merged vocabulary; an untied
    base's LM head must be saved with as many rows (the new tokens' output rows exist only
    there), and the tokenizer the merged model uses (the adapter's own, else the base's)
    must not produce ids past the table.

    Returns:
        ``(vocab_size, base_vocab_size)``: the adapter's vocabulary when it differs from the
        base's (else 0), and the base's.

    Raises:
        InputError: the LM head's new rows were not saved, or the tokenizer does not fit the table.
    """
    saved = {_module_key(name): shape for name, shape in adapter.items()
             if "lora_" not in name and ".original_module." not in name}
    base_shapes = {name: list(info.shape) for name, info in base_tensors.items()}
    base_rows = _rows(base_shapes, "embed_tokens.weight")
    rows = _rows(saved, "embed_tokens.weight") or _rows(saved, "lm_head.weight")
    tokenizer_dir = folder if has_tokenizer(own) else base
    tokens = _tokenizer_size(tokenizer_dir)
    if not rows or not base_rows or rows == base_rows:
        return 0, base_rows
    sizes = f"the adapter's vocabulary is {rows} tokens, the base {base.name}'s {base_rows}"
    untied = stores_lm_head(base_shapes)
    if untied and _rows(saved, "lm_head.weight") != rows:
        raise InputError(f"{folder}: {sizes}, but the adapter saves no {rows}-row lm_head, so the new tokens' output "
                         "rows were never saved: train with modules_to_save=['embed_tokens', 'lm_head'] and save the "
                         "adapter again.")
    if tokens > rows:
        raise InputError(f"{folder}: {sizes}, and the tokenizer in {tokenizer_dir} has {tokens} tokens, more than "
                         "the adapter's table: save the tokenizer the adapter was trained with next to it "
                         "(tokenizer.save_pretrained(ADAPTER_DIR)).")
    return rows, base_rows


def adapted_modules(adapter: dict[str, list[int]]) -> set[str]:
    """The short names (``q_proj``, ...) of the modules an adapter's weights adapt."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in adapter if ".lora_A" in name}


def check_shapes(folder: Path, adapter: dict[str, list[int]], base_shapes: dict[str, list[int]], base: Path) -> None:
    """Every adapted or saved module must exist in the base, with the sizes the adapter's matrices fit.

    A module saved whole (``modules_to_save``) must match the base's shape, except the rows
    of the embedding table and LM head (a resized vocabulary, see :func:`check_vocabulary`).

    Raises:
        ModelFolderError: the adapter holds no LoRA matrices.
        InputError: a module the base lacks, or of another size.
    """
    embedding = next((k for k in base_shapes if k.endswith("embed_tokens.weight")), None)
    if embedding and not stores_lm_head(base_shapes):
        # A tied base stores no LM head: its embedding table is the head. A head saved whole
        # (modules_to_save) replaces it in the merge, which unties the two; LoRA on it cannot be merged
        # without changing the embeddings too.
        if any(".lora_A" in name and name.split(".lora_A")[0].endswith("lm_head") for name in adapter):
            raise InputError(f"{folder}: the adapter trains LoRA on lm_head, which the base {base} ties to its "
                             "embedding table, so merging it would change the embeddings as well: retrain without "
                             "lm_head in target_modules (or with modules_to_save=['lm_head']).")
        base_shapes = {**base_shapes, "lm_head.weight": base_shapes[embedding]}
    for name, shape in adapter.items():
        if "lora_" in name or ".original_module." in name or "token_adapter" in name:
            continue
        key = _module_key(name)
        if key not in base_shapes:
            raise InputError(f"The adapter saves {key.removesuffix('.weight')} whole, which the base {base} does not "
                             "have: this adapter was trained on another model; pass the right --base.")
        vocabulary = key.endswith(("embed_tokens.weight", "lm_head.weight"))
        if (shape[1:] if vocabulary else shape) != (base_shapes[key][1:] if vocabulary else base_shapes[key]):
            raise InputError(f"The adapter's {key.removesuffix('.weight')} is {shape}, the base's {base_shapes[key]}: "
                             "this adapter was trained on another model size; pass the right --base.")
    lora_a = {name.split(".lora_A")[0]: shape for name, shape in adapter.items() if ".lora_A" in name}
    if not lora_a:
        raise ModelFolderError(folder, "adapter_model.safetensors holds no LoRA matrices", "Re-save the adapter.")
    for module, a_shape in lora_a.items():
        key = module.removeprefix("base_model.model.") + ".weight"
        b_shape = adapter.get(f"{module}.lora_B.weight")
        if key not in base_shapes:
            raise InputError(f"The adapter adapts {key.removesuffix('.weight')}, which the base {base} does not "
                             "have: this adapter was trained on another model; pass the right --base.")
        out_size, in_size = base_shapes[key][0], base_shapes[key][-1]
        if a_shape[-1] != in_size or (b_shape and b_shape[0] != out_size):
            raise InputError(f"The adapter's {key.removesuffix('.weight')} expects {in_size if a_shape[-1] != in_size else out_size}"
                             f"-wide weights of another shape than the base's {base_shapes[key]}: this adapter was "
                             "trained on another model size; pass the right --base.")


#: The largest logit difference a merge may make against the unmerged adapter, as a share of the logit range
#: (an FP32 merge differs by rounding, about 1e-7 of it; a merge that changes the model, by far more).
MERGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class MergeJob:
    """What the merge child is asked (the ``merge`` task's payload).

    Attributes:
        adapter: The adapter folder.
        base: The base model's Hugging Face folder.
        out: Where the merged folder is saved.
        vocab_size: The adapter's vocabulary when it resized the base's (0: the base's is kept).
        own_files: The adapter folder's tokenizer, template and generation files, which win over the base's.
    """

    adapter: str
    base: str
    out: str
    vocab_size: int = 0
    own_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class MergeResult:
    """What the merge child did (the ``merge`` task's result).

    Attributes:
        max_abs_diff_vs_unmerged: Largest absolute logit difference, merged against unmerged, on the reference text.
        tokenizer: Where the tokenizer, template and generation settings came from.
        logit_range: The unmerged model's largest minus smallest logit there (the scale of the difference).
    """

    max_abs_diff_vs_unmerged: float
    tokenizer: TokenizerOrigin
    logit_range: float = 0.0


def read_merge_record(merged: str | os.PathLike[str], adapter: AdapterSource) -> MergeRecord:
    """The ``merge.json`` of the merged folder ``merged``; the adapter's own description when it has none.

    Raises:
        InputError: not UTF-8 JSON.
        RecordError: not a merge record.
    """
    file = Path(merged) / MERGE_RECORD
    data = artifacts.read_json(file)
    return adapter.describe() if data is None else codec.load(MergeRecord, data, kind=str(file))
