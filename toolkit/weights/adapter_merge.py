"""A LoRA adapter merged into its FP32 base by peft's own ``merge_and_unload``, in a child process.

It writes an ordinary Hugging Face folder that every conversion route takes, after checking
the merged model's logits against the unmerged one's on a fixed text. The merged folder is
kept under the toolkit's models folder, keyed by the adapter's and the base's contents, and
reused. Runs as a worker task (``merge``, see :mod:`slmops.toolkit.core.workers`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, settings, workers
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain.adapters import (
    CHECK_TOKENS,
    GENERATION_CONFIG,
    MERGE_RECORD,
    MERGE_TOLERANCE,
    AdapterSource,
    MergeJob,
    MergeResult,
    has_tokenizer,
)
from slmops.toolkit.domain.prompts import reference_text
from slmops.toolkit.domain.results.merge import MergeCheck, TokenizerOrigin
from slmops.toolkit.domain.sources import fingerprint


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
        result = codec.load(MergeResult, workers.run_worker(
            "slmops.toolkit.weights.adapter_merge", "merge", codec.dump(job),
            name=f"merge of {adapter.path.name} into {adapter.base.name}", idle_timeout=1800).result)
        allowed = MERGE_TOLERANCE * max(result.logit_range, 1.0)
        if result.max_abs_diff_vs_unmerged > allowed:
            raise InputError(
                f"Merging {adapter.path} into {adapter.base} changes what the adapter computes (largest logit "
                f"difference {result.max_abs_diff_vs_unmerged:.4g} against the unmerged adapter, allowed "
                f"{allowed:.3g}), so no build of it could be correct; nothing was kept. Check that the adapter "
                "was trained on this base, and retrain it with plain LoRA on the linear layers.")
        check = MergeCheck(result.max_abs_diff_vs_unmerged, result.logit_range, allowed)
        codec.write(staging / MERGE_RECORD, replace(adapter.describe(), merge_check=check, tokenizer=result.tokenizer))
        artifacts.swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    job = codec.load(MergeJob, payload)
    adapter_dir, base_dir, out = Path(job.adapter), Path(job.base), Path(job.out)
    own = job.own_files
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if job.vocab_size:
        base.resize_token_embeddings(job.vocab_size, mean_resizing=False)
    tokenizer_dir = adapter_dir if has_tokenizer(own) else base_dir
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
    result = MergeResult(float((merged - unmerged).abs().max()), origin, float(unmerged.max() - unmerged.min()))
    return codec.dump(result)


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
