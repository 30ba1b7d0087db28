"""PEFT LoRA adapters as a conversion source: checked against their base, then merged into it.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Its base
is the local folder its config names (``base_model_name_or_path``) or the one given with
``--base``. Everything is checked from the files' headers before anything is written: the
adapter kind (only LoRA merges into plain weights), a reachable base, and that every
adapted module exists in the base with the shapes the adapter's matrices need.

The merge is peft's own ``merge_and_unload`` on the FP32 base, in a child process; it
writes an ordinary Hugging Face folder that every conversion route takes, and records the
merged model's next-token logits on a fixed text so the FP32 ONNX build can be checked
against them (:func:`toolkit.stages.convert.convert` does). The merged folder is kept under
the toolkit's models folder, keyed by the adapter's and the base's contents, and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from toolkit.core import artifacts, settings, workers
from toolkit.core.errors import InputError, ModelFolderError
from toolkit.domain.prompts import reference_text
from toolkit.domain.sources import fingerprint, inspect_source

ADAPTER_CONFIG = "adapter_config.json"
MERGE_RECORD = "merge.json"
REFERENCE_LOGITS = "merged_logits.npy"
MERGE_ROUTE = "peft merge_and_unload (FP32)"
#: Token positions of the reference text whose logits the merge keeps for the FP32 check.
CHECK_TOKENS = 64


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
    """

    path: Path
    base: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    fingerprint: str

    def describe(self) -> dict:
        """The manifest's ``adapter`` entry."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "base": str(self.base), "rank": self.rank,
                "alpha": self.alpha, "target_modules": list(self.target_modules), "merge_route": MERGE_ROUTE}


def is_adapter(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a PEFT adapter folder (it has ``adapter_config.json``)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """Tensor names to shapes, from a safetensors file's header alone."""
    with file.open("rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        if size > 100_000_000:
            raise ValueError("the header is implausibly large")
        header = json.loads(handle.read(size))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


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
    named = base or config.get("base_model_name_or_path")
    if not named or not (Path(str(named)).expanduser() / "config.json").is_file():
        raise InputError(f"The adapter's base {named!r} is not a local model folder"
                         + (" (the adapter names a hub id; this toolkit works offline)" if named and not base else "")
                         + ": pass --base DIR, the Hugging Face folder it was trained on.")
    base_source = inspect_source(Path(str(named)))
    _check_shapes(folder, weights, base_source.path)
    rank = int(config.get("r") or 0)
    return AdapterSource(folder, base_source.path, rank, float(config.get("lora_alpha") or rank),
                         tuple(sorted(_adapted_modules(weights))), fingerprint(folder))


def _adapted_modules(weights: Path) -> set[str]:
    """The short names (``q_proj``, ...) of the modules an adapter's weights adapt."""
    return {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in _safetensors_shapes(weights) if ".lora_A" in name}


def _check_shapes(folder: Path, weights: Path, base: Path) -> None:
    """Every adapted module must exist in the base, with ``in`` and ``out`` sizes the LoRA matrices fit."""
    try:
        adapter = _safetensors_shapes(weights)
        base_shapes: dict[str, list[int]] = {}
        for file in sorted(base.glob("*.safetensors")):
            base_shapes.update(_safetensors_shapes(file))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelFolderError(folder, f"cannot read the weights' headers ({exc})", "Re-save the adapter.") from exc
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


def merged_folder(adapter: AdapterSource) -> Path:
    """Where the merge of ``adapter`` into its base is kept (keyed by both folders' contents)."""
    return settings.models_dir() / "merged" / f"{adapter.path.name}-{adapter.fingerprint[:8]}-{fingerprint(adapter.base)[:8]}"


def merge(adapter: AdapterSource) -> Path:
    """Merge ``adapter`` into its base (once; reused after) and return the merged Hugging Face folder.

    Raises:
        ToolFailedError: the merge failed in its child process (the message says why).
    """
    target = merged_folder(adapter)
    if (target / MERGE_RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    artifacts.remove_stale(target.parent)
    staging = artifacts.staging_dir(target, "merging")
    try:
        check = workers.run_worker("toolkit.domain.adapters", "merge",
                                   {"adapter": str(adapter.path), "base": str(adapter.base), "out": str(staging)},
                                   name=f"merge of {adapter.path.name} into {adapter.base.name}",
                                   idle_timeout=1800).result
        artifacts.write_json(staging / MERGE_RECORD, {**adapter.describe(), "merge_check": check})
        artifacts.swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _merge_task(job: dict, _emit) -> dict:
    """Worker task: peft's merge into the FP32 base; saves the merged folder and its reference logits."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    base = AutoModelForCausalLM.from_pretrained(job["base"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["base"])
    ids = tokenizer(reference_text(), return_tensors="pt", add_special_tokens=False).input_ids[:, :CHECK_TOKENS]
    peft_model = PeftModel.from_pretrained(base, job["adapter"])
    with torch.no_grad():
        unmerged = peft_model(ids).logits[0]
        merged_model = peft_model.merge_and_unload()
        merged = merged_model(ids).logits[0]
    out = Path(job["out"])
    merged_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (Path(job["base"]) / extra).is_file() and not (out / extra).is_file():
            shutil.copy2(Path(job["base"]) / extra, out / extra)
    np.save(out / REFERENCE_LOGITS, merged.numpy().astype(np.float32))
    return {"max_abs_diff_vs_unmerged": float((merged - unmerged).abs().max())}


if __name__ == "__main__":
    workers.serve({"merge": _merge_task})
