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

The merge is peft's own ``merge_and_unload`` on the FP32 base, in a child process; it
writes an ordinary Hugging Face folder that every conversion route takes (and checks each
build against in transformers: :mod:`slmops.toolkit.runtimes.reference`), after checking the merged
model's logits against the unmerged one's on a fixed text. The merged folder is kept under
the toolkit's models folder, keyed by the adapter's and the base's contents, and reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slmops.toolkit.core import artifacts, settings, workers
from slmops.toolkit.core.errors import InputError, ModelFolderError, QuantizedCheckpointError
from slmops.toolkit.domain.prompts import reference_text
from slmops.toolkit.domain.sources import TensorInfo, fingerprint, inspect_source, read_tensors, stores_lm_head

log = logging.getLogger(__name__)

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

    def describe(self) -> dict:
        """The manifest's ``adapter`` entry."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "base": str(self.base), "rank": self.rank,
                "alpha": self.alpha, "rank_pattern": dict(self.rank_pattern), "alpha_pattern": dict(self.alpha_pattern),
                "use_rslora": self.use_rslora, "target_modules": list(self.target_modules),
                "modules_to_save": list(self.modules_to_save),
                "vocab_size": {"base": self.base_vocab_size, "merged": self.vocab_size or self.base_vocab_size},
                "files_from_adapter": list(self.own_files), "merge_route": MERGE_ROUTE}


def is_adapter(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a PEFT adapter folder (it has ``adapter_config.json``)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def inspect_adapter(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> AdapterSource:
    """Check a LoRA adapter folder and its base, and describe them.

    Raises:
        ModelFolderError: no or malformed ``adapter_config.json``, or no adapter weights.
        InputError: an adapter kind that cannot be merged, no reachable base, or a base that
            does not match the adapter (a missing module or other shapes).
    """
    folder = Path(path).expanduser().resolve()
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except FileNotFoundError as exc:
        raise ModelFolderError(folder, "no adapter_config.json", "Point at the folder peft's save_pretrained "
                               "wrote.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFolderError(folder, f"adapter_config.json is not valid UTF-8 JSON ({exc})",
                               "Re-save the adapter.") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(folder, "adapter_config.json is not a JSON object", "Re-save the adapter.")
    kind = str(config.get("peft_type", "?")).upper()
    if kind != "LORA":
        raise InputError(f"{folder} is a {kind} adapter: only LoRA adapters merge into the base's weights "
                         "(prompt and prefix tuning add tokens at run time, which Foundry Local does not). "
                         "Train a LoRA adapter instead.")
    if config.get("use_dora"):
        raise InputError(f"{folder}: DoRA adapters are not supported yet; train plain LoRA (use_dora=False).")
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelFolderError(folder, "no adapter_model.safetensors", "Re-save the adapter with "
                               "save_pretrained(safe_serialization=True).")
    artifacts.check_no_links_leaving(folder)
    trained_on = config.get("base_model_name_or_path")
    if (base and trained_on and (Path(str(trained_on)).expanduser() / "config.json").is_file()
            and Path(str(trained_on)).expanduser().resolve() != Path(base).expanduser().resolve()):
        # An instruct adapter on a base checkpoint (or the reverse) merges without an error, and answers worse.
        log.warning("%s: adapter_config.json names %s as the base it was trained on; merging into --base %s instead.",
                    folder.name, trained_on, base)
    named = base or trained_on
    if not named or not (Path(str(named)).expanduser() / "config.json").is_file():
        raise InputError(f"The adapter's base {named!r} is not a local model folder"
                         + (f" (a hub id, or a path relative to another folder than {Path.cwd()}: this toolkit works offline)"
                            if named and not base else "")
                         + ": pass --base DIR, the Hugging Face folder it was trained on.")
    try:
        base_source = inspect_source(Path(str(named)))
    except QuantizedCheckpointError as exc:
        raise InputError(
            f"The adapter's base {exc.path} is an already-quantized checkpoint ({exc.method}), as QLoRA trains on: "
            "the merge needs the 16-bit model it was quantized from; pass it with --base DIR"
            + (f" ({exc.original}, saved with save_pretrained)." if exc.original else ".")) from exc
    try:
        adapter_tensors = {name: list(info.shape) for name, info in read_tensors(folder, [weights]).items()}
        base_tensors = read_tensors(base_source.path)
    except OSError as exc:
        raise ModelFolderError(folder, f"cannot read the weights' headers ({exc})", "Re-save the adapter.") from exc
    base_shapes = {name: list(info.shape) for name, info in base_tensors.items()}
    _check_shapes(folder, adapter_tensors, base_shapes, base_source.path)
    _check_targets(folder, config, adapter_tensors, base_shapes, base_source.path)
    own = own_files(folder)
    vocab, base_vocab = _check_vocabulary(folder, adapter_tensors, base_tensors, base_source.path, own)
    rank = _number(folder, config, "r", int)
    ranks, alphas = (_pattern(folder, config, key, kind) for key, kind in (("rank_pattern", int),
                                                                          ("alpha_pattern", float)))
    return AdapterSource(folder, base_source.path, rank, float(_number(folder, config, "lora_alpha", float) or rank),
                         tuple(sorted(_adapted_modules(adapter_tensors))), fingerprint(folder),
                         modules_to_save=tuple(sorted(_saved_modules(adapter_tensors))), vocab_size=vocab,
                         base_vocab_size=base_vocab, own_files=own, rank_pattern=ranks, alpha_pattern=alphas,
                         use_rslora=config.get("use_rslora") is True)


def _number(folder: Path, config: dict, key: str, kind: type) -> float:
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


def _pattern(folder: Path, config: dict, key: str, kind: type) -> tuple[tuple[str, float], ...]:
    """``config[key]`` (peft's ``rank_pattern``/``alpha_pattern``: module name pattern -> number) as sorted pairs.

    Raises:
        ModelFolderError: it is not an object of positive numbers.
    """
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise ModelFolderError(folder, f"adapter_config.json's {key} is not an object", "Re-save the adapter with peft.")
    return tuple(sorted((str(name), _number(folder, value, name, kind)) for name in value))


def _check_targets(folder: Path, config: dict, adapter: dict[str, list[int]], base_shapes: dict[str, list[int]],
                   base: Path) -> None:
    """The modules ``adapter_config.json`` targets, matched in the base as peft matches them, must be the adapted ones.

    peft builds the LoRA layers from the config (``target_modules`` as names or a regex,
    ``layers_to_transform``, ``layers_pattern``, ``exclude_modules``), then loads the weights
    into them: a config matching no module of the base fails only at the merge, and weights of
    a module the config does not target are dropped without a word (a merge that leaves part of
    the fine-tune out). peft's own matcher (``check_target_module_exists``) is run here, on the
    base's module names from its weights' headers.

    Raises:
        ModelFolderError: the config is not a valid LoRA config for this peft.
        InputError: the config targets none of the base's modules, or not the modules the weights adapt.
    """
    from dataclasses import fields

    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = config.get("target_modules")
    if targets in (None, "all-linear") or config.get("target_parameters"):
        return  # peft picks the modules itself (every linear layer), or adapts parameters, not modules
    known = {f.name for f in fields(LoraConfig)}
    try:
        lora = LoraConfig(**{key: value for key, value in config.items() if key in known})
    except (TypeError, ValueError) as exc:
        raise ModelFolderError(folder, f"adapter_config.json is not a LoRA config peft can load "
                               f"({' '.join(str(exc).split())[:200]})", "Re-save the adapter with peft.") from exc
    modules = {name.removesuffix(".weight"): shape for name, shape in base_shapes.items() if name.endswith(".weight")}
    embedding = next((name for name in modules if name.endswith("embed_tokens")), None)
    if embedding and not stores_lm_head(base_shapes):  # a tied base stores no head, but has the module
        modules["lm_head"] = modules[embedding]
    try:
        targeted = {key for key in modules if check_target_module_exists(lora, key)}
    except (TypeError, ValueError, re.error) as exc:
        raise ModelFolderError(folder, f"adapter_config.json's target_modules {targets!r} cannot be matched "
                               f"({' '.join(str(exc).split())[:200]})", "Re-save the adapter with peft.") from exc
    adapted = {name.split(".lora_A")[0].removeprefix("base_model.model.") for name in adapter if ".lora_A" in name}
    shown = f"target_modules {targets!r}" + "".join(
        f" with {key} {config[key]!r}" for key in ("layers_to_transform", "layers_pattern", "exclude_modules")
        if config.get(key) not in (None, [], ""))
    limits = [key for key in ("layers_to_transform", "layers_pattern") if config.get(key) not in (None, [], "")]
    fix = (f"set target_modules in adapter_config.json to the modules its weights adapt "
           f"({sorted({m.rsplit('.', 1)[-1] for m in adapted})})"
           + (f" and {' and '.join(limits)} to their layers (or remove {'them' if len(limits) > 1 else 'it'})"
              if limits else "") + ", or pass the --base it was trained on")
    if not targeted:
        raise InputError(f"{folder}: adapter_config.json's {shown} match no module of the base {base}, so peft "
                         f"cannot load it: {fix}.")
    left_out = sorted(adapted - targeted)
    if left_out:
        raise InputError(f"{folder}: the weights adapt {left_out[0]}" + (f" and {len(left_out) - 1} more" if
                         len(left_out) > 1 else "") + f", which adapter_config.json's {shown} do not match, so peft "
                         f"would leave them out of the merge: {fix}.")
    unsupported = sorted(key for key in targeted if len(modules[key]) != 2)
    if unsupported:
        raise InputError(f"{folder}: adapter_config.json's {shown} match {unsupported[0]}, which is not a linear or "
                         f"embedding layer (LoRA cannot adapt it): {fix}.")


def own_files(folder: Path) -> tuple[str, ...]:
    """The tokenizer, template and generation files an adapter folder carries (they win over the base's)."""
    return tuple(name for name in (*TOKENIZER_FILES, *TEMPLATE_FILES, GENERATION_CONFIG) if (folder / name).is_file())


def _has_tokenizer(names: tuple[str, ...]) -> bool:
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


def _saved_modules(adapter: dict[str, list[int]]) -> set[str]:
    """The short names of the modules an adapter saves whole (``modules_to_save``)."""
    keys = {_module_key(name) for name in adapter if "lora_" not in name and ".original_module." not in name}
    return {key.rsplit(".", 2)[-2] for key in keys if key.endswith(".weight")}


def _rows(tensors: dict[str, list[int]], ending: str) -> int:
    """Rows of the first 2-D tensor whose name ends with ``ending`` (0 when there is none)."""
    return next((shape[0] for name, shape in sorted(tensors.items()) if name.endswith(ending) and len(shape) == 2), 0)


def _check_vocabulary(folder: Path, adapter: dict[str, list[int]], base_tensors: dict[str, TensorInfo], base: Path,
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
    tokenizer_dir = folder if _has_tokenizer(own) else base
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


def _adapted_modules(adapter: dict[str, list[int]]) -> set[str]:
    """The short names (``q_proj``, ...) of the modules an adapter's weights adapt."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in adapter if ".lora_A" in name}


def _check_shapes(folder: Path, adapter: dict[str, list[int]], base_shapes: dict[str, list[int]], base: Path) -> None:
    """Every adapted or saved module must exist in the base, with the sizes the adapter's matrices fit.

    A module saved whole (``modules_to_save``) must match the base's shape, except the rows
    of the embedding table and LM head (a resized vocabulary, see :func:`_check_vocabulary`).

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


#: A LoRA matrix's layer, module and side, in peft's names (``...layers.0.self_attn.q_proj.lora_A.weight``) and in
#: the model builder's graph inputs (``model.layers.0.attn.q_proj.lora_A.MatMul.weight``).
_LORA_KEY = re.compile(r"layers\.(\d+)\.(?:.*\.)?(\w+)\.lora_([AB])\.(?:MatMul\.)?weight$")


def lora_matrices(adapter: AdapterSource, inputs: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """An adapter's LoRA matrices under the graph input names of a build whose LoRA was kept apart.

    The model builder stores A as ``[in, r]`` and B as ``[r, out]`` times the LoRA scaling
    (alpha / r, alpha / sqrt(r) with rsLoRA), each under a name that keeps the layer and the
    module; peft saves A as ``[r, in]`` and B as ``[out, r]``. The rank is free (the graph's
    rank dimension is symbolic); a module the graph has no input for cannot be applied.

    Args:
        adapter: A checked adapter of the build's base.
        inputs: The build's LoRA input names and the shapes they were built with.

    Returns:
        Input name to float32 matrix, for every matrix of the adapter.

    Raises:
        InputError: per-module ranks or alphas, a LoRA bias, or a module (or size) the build has no input for.
    """
    from safetensors.numpy import load_file

    config = json.loads((adapter.path / ADAPTER_CONFIG).read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("lora_bias"):
        raise InputError(f"{adapter.path}: per-module ranks or alphas (rank_pattern, alpha_pattern) or LoRA biases "
                         "cannot be kept apart yet: convert it without --keep-adapter (merged).")
    scale = adapter.alpha / (adapter.rank ** 0.5 if config.get("use_rslora") else adapter.rank)
    by_key = {m.groups(): name for name in inputs if (m := _LORA_KEY.search(name))}
    matrices = {}
    for name, array in load_file(adapter.path / "adapter_model.safetensors").items():
        match = _LORA_KEY.search(name)
        target = by_key.get(match.groups()) if match else None
        if target is not None:
            side_b = match.group(3) == "B"
            matrix = (array.T * (scale if side_b else 1.0)).astype(np.float32)
            fixed = 1 if side_b else 0  # the layer's own size must match; the rank is free
        if target is None or matrix.shape[fixed] != inputs[target][fixed]:
            raise InputError(f"{adapter.path}: {name} has no LoRA input of its size in the build (its LoRA inputs "
                             "are those of the first adapter): keep apart only adapters of the same base on the "
                             "same modules, or convert this one on its own.")
        matrices[target] = matrix
    return matrices


#: The largest logit difference a merge may make against the unmerged adapter, as a share of the logit range
#: (an FP32 merge differs by rounding, about 1e-7 of it; a merge that changes the model, by far more).
MERGE_TOLERANCE = 1e-3


def merged_folder(adapter: AdapterSource) -> Path:
    """Where the merge of ``adapter`` into its base is kept (keyed by both folders' contents)."""
    return settings.models_dir() / "merged" / f"{adapter.path.name}-{adapter.fingerprint[:8]}-{fingerprint(adapter.base)[:8]}"


def merge(adapter: AdapterSource) -> Path:
    """Merge ``adapter`` into its base (once; reused after) and return the merged Hugging Face folder.

    The merge record (``merge.json``, the manifest's ``adapter`` entry) holds
    :meth:`AdapterSource.describe`, the merge's own check (merged against unmerged logits)
    and where the merged model's tokenizer, chat template and generation settings came from.

    Raises:
        ToolFailedError: the merge failed in its child process (the message says why).
        InputError: the merged model's logits differ from the unmerged adapter's by more than
            :data:`MERGE_TOLERANCE` of their range (nothing is kept).
    """
    target = merged_folder(adapter)
    if (target / MERGE_RECORD).is_file():
        return target
    with artifacts.built_once(target, f"the merge of {adapter.path.name}"):
        if not (target / MERGE_RECORD).is_file():  # not merged meanwhile by another process
            _merge_into(adapter, target)
    return target


def _merge_into(adapter: AdapterSource, target: Path) -> None:
    """Merge ``adapter`` in a child process into a scratch sibling of ``target``, swapped into place."""
    artifacts.remove_stale(target.parent)
    staging = artifacts.staging_dir(target, "merging")
    try:
        job = MergeJob(str(adapter.path), str(adapter.base), str(staging), adapter.vocab_size, adapter.own_files)
        result = MergeResult.from_json(workers.run_worker(
            "slmops.toolkit.domain.adapters", "merge", job.to_json(),
            name=f"merge of {adapter.path.name} into {adapter.base.name}", idle_timeout=1800).result)
        allowed = MERGE_TOLERANCE * max(result.logit_range, 1.0)
        if result.max_abs_diff_vs_unmerged > allowed:
            raise InputError(
                f"Merging {adapter.path} into {adapter.base} changes what the adapter computes (largest logit "
                f"difference {result.max_abs_diff_vs_unmerged:.4g} against the unmerged adapter, allowed "
                f"{allowed:.3g}), so no build of it could be correct; nothing was kept. Check that the adapter "
                "was trained on this base, and retrain it with plain LoRA on the linear layers.")
        check = {"max_abs_diff_vs_unmerged": result.max_abs_diff_vs_unmerged, "logit_range": result.logit_range,
                 "allowed": allowed}
        artifacts.write_json(staging / MERGE_RECORD, {**adapter.describe(), "merge_check": check,
                                                      "tokenizer": result.tokenizer.to_json()})
        artifacts.swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

    def to_json(self) -> dict:
        """The payload as the child reads it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MergeJob:
        """A job as :meth:`to_json` wrote it."""
        return cls(str(data["adapter"]), str(data["base"]), str(data["out"]), int(data.get("vocab_size") or 0),
                   tuple(str(name) for name in data.get("own_files") or ()))


@dataclass(frozen=True)
class TokenizerOrigin:
    """Where a merged model's tokenizer, chat template and generation settings came from (``merge.json``'s ``tokenizer``).

    Attributes:
        tokenizer_from: ``adapter`` or ``base``.
        chat_template_from: ``adapter`` or ``base``.
        generation_config_from: ``adapter`` or ``base``.
        files_from_adapter: The adapter folder's own files that were used.
        eos_token_ids_added: EOS ids added to the merged ``generation_config.json``.
        vocab_size: The merged model's vocabulary (embedding rows).
    """

    tokenizer_from: str
    chat_template_from: str
    generation_config_from: str
    files_from_adapter: tuple[str, ...]
    eos_token_ids_added: tuple[int, ...]
    vocab_size: int

    def to_json(self) -> dict:
        """The record as ``merge.json`` keeps it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TokenizerOrigin:
        """A record as :meth:`to_json` wrote it."""
        return cls(str(data["tokenizer_from"]), str(data["chat_template_from"]), str(data["generation_config_from"]),
                   tuple(str(name) for name in data["files_from_adapter"]),
                   tuple(int(i) for i in data["eos_token_ids_added"]), int(data["vocab_size"]))


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

    def to_json(self) -> dict:
        """The result as the child sends it."""
        return {"max_abs_diff_vs_unmerged": self.max_abs_diff_vs_unmerged, "tokenizer": self.tokenizer.to_json(),
                "logit_range": self.logit_range}

    @classmethod
    def from_json(cls, data: dict) -> MergeResult:
        """A result as :meth:`to_json` wrote it."""
        return cls(float(data["max_abs_diff_vs_unmerged"]), TokenizerOrigin.from_json(data["tokenizer"]),
                   float(data.get("logit_range") or 0.0))


def _merge_task(payload: dict, _emit) -> dict:
    """Worker task: peft's merge into the FP32 base (a :class:`MergeJob`); saves the merged folder.

    A resized vocabulary (``vocab_size``) resizes the base first (new rows zero: the
    adapter's saved embedding table and LM head replace them). The adapter folder's own
    tokenizer, chat template and generation settings (``own_files``) win over the base's.

    Returns:
        A :class:`MergeResult`: the merge check and where the tokenizer, template and generation
        settings came from, and any EOS id added.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    job = MergeJob.from_json(payload)
    adapter_dir, base_dir, out = Path(job.adapter), Path(job.base), Path(job.out)
    own = job.own_files
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if job.vocab_size:
        base.resize_token_embeddings(job.vocab_size, mean_resizing=False)
    tokenizer_dir = adapter_dir if _has_tokenizer(own) else base_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if "chat_template.jinja" in own:
        tokenizer.chat_template = (adapter_dir / "chat_template.jinja").read_text()
    template_from = "adapter" if tokenizer_dir == adapter_dir or "chat_template.jinja" in own else "base"
    if not tokenizer.chat_template and tokenizer_dir == adapter_dir:  # the adapter's tokenizer came without one
        tokenizer.chat_template = AutoTokenizer.from_pretrained(base_dir).chat_template
        template_from = "base"
    ids = tokenizer(reference_text(), return_tensors="pt", add_special_tokens=False).input_ids[:, :CHECK_TOKENS]
    peft_model = PeftModel.from_pretrained(base, adapter_dir)
    with torch.no_grad():
        unmerged = peft_model(ids).logits[0]
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(ids).logits[0]
    merged_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for extra in (GENERATION_CONFIG, "chat_template.jinja"):
        if extra in own:
            shutil.copy2(adapter_dir / extra, out / extra)
        elif (base_dir / extra).is_file() and not (out / extra).is_file():
            shutil.copy2(base_dir / extra, out / extra)
    added = _add_tokenizer_eos(out, tokenizer) if tokenizer_dir == adapter_dir else []
    origin = TokenizerOrigin("adapter" if tokenizer_dir == adapter_dir else "base", template_from,
                             "adapter" if GENERATION_CONFIG in own else "base", own, tuple(added),
                             int(merged_model.get_input_embeddings().weight.shape[0]))
    return MergeResult(float((merged - unmerged).abs().max()), origin, float(unmerged.max() - unmerged.min())).to_json()


def _add_tokenizer_eos(out: Path, tokenizer) -> list[int]:
    """Add the adapter tokenizer's EOS id to the merged ``generation_config.json`` when it is not there yet.

    A fine-tune that added its own end-of-turn token as EOS stops on it only when the
    runtime knows it; the base's generation settings name the base's EOS alone.

    Returns:
        The ids added (empty when nothing was).
    """
    eos = tokenizer.eos_token_id
    file = out / GENERATION_CONFIG
    if eos is None or not file.is_file():
        return []
    settings_ = json.loads(file.read_text())
    known = settings_.get("eos_token_id")
    known = [] if known is None else known if isinstance(known, list) else [known]
    if eos in known:
        return []
    settings_["eos_token_id"] = [*known, eos] if known else eos
    file.write_text(json.dumps(settings_, indent=2) + "\n")
    return [int(eos)]


if __name__ == "__main__":
    workers.serve({"merge": _merge_task})
