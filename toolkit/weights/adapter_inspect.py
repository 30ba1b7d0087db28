"""A LoRA adapter folder checked against its base, from the files' headers, before anything is written.

The checks on names and shapes are the domain's (:mod:`slmops.toolkit.domain.adapters`); this
module reads the headers (:mod:`slmops.toolkit.weights.checkpoints`) and matches the config's
targets in the base as peft itself does (``check_target_module_exists``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import InputError, ModelFolderError, QuantizedCheckpointError
from slmops.toolkit.domain.adapters import (
    ADAPTER_CONFIG,
    AdapterSource,
    adapted_modules,
    check_shapes,
    check_vocabulary,
    config_number,
    config_pattern,
    own_files,
    saved_modules,
)
from slmops.toolkit.domain.sources import SourceModel, fingerprint, stores_lm_head
from slmops.toolkit.weights.checkpoints import inspect_source, read_tensors

log = logging.getLogger(__name__)


def _lora_config(folder: Path) -> dict:
    """The folder's ``adapter_config.json`` when it describes a plain LoRA adapter with safetensors weights."""
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
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelFolderError(folder, "no adapter_model.safetensors", "Re-save the adapter with "
                               "save_pretrained(safe_serialization=True).")
    return config


def _local_base(folder: Path, config: dict, base: str | os.PathLike[str] | None) -> SourceModel:
    """The base to merge into (``base``, else the one the adapter names): a local, unquantized model folder."""
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
        return inspect_source(Path(str(named)))
    except QuantizedCheckpointError as exc:
        raise InputError(
            f"The adapter's base {exc.path} is an already-quantized checkpoint ({exc.method}), as QLoRA trains on: "
            "the merge needs the 16-bit model it was quantized from; pass it with --base DIR"
            + (f" ({exc.original}, saved with save_pretrained)." if exc.original else ".")) from exc


def inspect_adapter(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> AdapterSource:
    """Check a LoRA adapter folder and its base, and describe them.

    Raises:
        ModelFolderError: no or malformed ``adapter_config.json``, or no adapter weights.
        InputError: an adapter kind that cannot be merged, no reachable base, or a base that
            does not match the adapter (a missing module or other shapes).
    """
    folder = Path(path).expanduser().resolve()
    config = _lora_config(folder)
    weights = folder / "adapter_model.safetensors"
    artifacts.check_no_links_leaving(folder)
    base_source = _local_base(folder, config, base)
    try:
        adapter_tensors = {name: list(info.shape) for name, info in read_tensors(folder, [weights]).items()}
        base_tensors = read_tensors(base_source.path)
    except OSError as exc:
        raise ModelFolderError(folder, f"cannot read the weights' headers ({exc})", "Re-save the adapter.") from exc
    base_shapes = {name: list(info.shape) for name, info in base_tensors.items()}
    check_shapes(folder, adapter_tensors, base_shapes, base_source.path)
    _check_targets(folder, config, adapter_tensors, base_shapes, base_source.path)
    own = own_files(folder)
    vocab, base_vocab = check_vocabulary(folder, adapter_tensors, base_tensors, base_source.path, own)
    rank = config_number(folder, config, "r", int)
    ranks, alphas = (config_pattern(folder, config, key, kind) for key, kind in (("rank_pattern", int),
                                                                          ("alpha_pattern", float)))
    return AdapterSource(folder, base_source.path, rank, float(config_number(folder, config, "lora_alpha", float) or rank),
                         tuple(sorted(adapted_modules(adapter_tensors))), fingerprint(folder),
                         modules_to_save=tuple(sorted(saved_modules(adapter_tensors))), vocab_size=vocab,
                         base_vocab_size=base_vocab, own_files=own, rank_pattern=ranks, alpha_pattern=alphas,
                         use_rslora=config.get("use_rslora") is True)


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
