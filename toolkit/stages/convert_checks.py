"""Everything checked before a conversion starts, once: the source, the options, the disk and the memory.

:func:`prepare` is the one pass over a :class:`~slmops.toolkit.stages.convert_plan.ConvertSpec`: it refuses
bad input in one line naming the fix (before anything is changed) and keeps what it found (the source,
the adapter, the memory estimate) for the build, which does not look again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.artifacts import MANIFEST
from slmops.toolkit.core.errors import (
    InconsistentCheckpointError,
    InputError,
    InsufficientMemoryError,
    InvalidOptionError,
    ModelFolderError,
    UnsupportedArchitectureError,
)
from slmops.toolkit.core.measure import available_mib
from slmops.toolkit.domain import adapters, memory, parity, stop_tokens
from slmops.toolkit.domain.options import BLOCK_SIZES, Method, Precision
from slmops.toolkit.domain.sources import SourceModel, text_config
from slmops.toolkit.stages.convert_plan import (
    _PROVIDERS,
    ADAPTER_SUFFIX,
    OLIVE_CONFIG,
    ConvertSpec,
    needs_quantizer,
    quant_plan,
    route_precision,
    supported_activations,
    supported_architectures,
)
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from slmops.toolkit.weights.checkpoints import inspect_source, read_tensors, tied_flag_contradicts_head
from slmops.toolkit.weights.lora_apart import token_rows
from slmops.toolkit.weights.source_inspect import check_loads


def check_source(model_dir: str | os.PathLike[str]) -> SourceModel:
    """Describe a Hugging Face model folder, or say why this toolkit cannot convert it.

    Raises:
        ModelFolderError: not a Hugging Face model folder.
        UnsupportedArchitectureError: the builder cannot convert this architecture.
    """
    source = inspect_source(model_dir)
    config = artifacts.read_json(source.path / "config.json", {})
    fields = text_config(config)
    supported = supported_architectures()
    if not config.get("architectures"):
        raise ModelFolderError(source.path, "config.json names no architectures (the builder picks the model's "
                               "graph by it)", 'Set "architectures" to the class the model was saved from, '
                               f"for example {_architecture_hint(source.model_type)}.")
    if supported and source.architecture not in supported:
        raise UnsupportedArchitectureError(source.architecture, supported)
    # What the build would meet later (the builder and the parity check load the folder with transformers), met now.
    stop_tokens.check_files(source.path)
    if type(fields.get("vocab_size")) is int:
        stop_tokens.check_ids_in_vocab(source.path, fields["vocab_size"])
    check_loads(source.path, read_tensors(source.path))
    _check_builder_fields(source.path, fields)
    return source


def _architecture_hint(model_type: str) -> str:
    """``["<the causal LM class of model_type>"]`` as JSON, or a generic example."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    return f'["{name}"]' if isinstance(name, str) else '["LlamaForCausalLM"]'


def _check_builder_fields(folder: Path, fields: dict) -> None:
    """Refuse config values transformers takes but the pinned model builder fails on (after loading the model).

    Raises:
        InconsistentCheckpointError: an activation the builder has no graph for, or a LongRoPE setting without the
            ``type`` field the builder reads.
    """
    activation = fields.get("hidden_activation") or fields.get("hidden_act")
    activations = supported_activations()
    if isinstance(activation, str) and activations and activation not in activations:
        raise InconsistentCheckpointError(
            folder, f"config.json's hidden_act {activation!r} is not an activation the ONNX Runtime GenAI builder "
            f"builds ({', '.join(activations)})",
            "Convert a model whose MLP uses one of those (the builder cannot build this one).")
    for key in ("rope_scaling", "rope_parameters"):
        rope = fields.get(key)
        if isinstance(rope, dict) and "short_factor" in rope and "type" not in rope:
            kind = rope.get("rope_type", "longrope")
            raise InconsistentCheckpointError(
                folder, f"config.json's {key} is LongRoPE (short_factor, long_factor) without the type field the "
                "builder reads", f'Add "type": "{kind}" to {key} in config.json (as Phi-3\'s configs have it).')


def memory_estimate(spec: ConvertSpec, source: SourceModel, reference_dtype: str = "float32") -> memory.MemoryEstimate:
    """The predicted peak memory of converting ``source`` (the adapter's base, for an adapter) by ``spec``.

    ``reference_dtype`` is what the parity check loads the source in (see :attr:`Prepared.reference_dtype`).
    """
    vocab = source.largest_tensor // source.hidden_size if source.hidden_size else 0
    return memory.estimate(
        parameters=source.parameters, largest_tensor=source.largest_tensor,
        checkpoint_bytes=source.checkpoint_bytes or 4 * source.parameters, method=Method(spec.method),
        route_precision=route_precision(spec), quantized=needs_quantizer(spec),
        adapter=adapters.is_adapter(spec.model_dir),
        parity_bytes_per_weight=4 if reference_dtype == "float32" else 2,
        parity_logits=vocab * 2 * parity.TEXT_POSITIONS)


@dataclass(frozen=True)
class Prepared:
    """A checked conversion: what :func:`prepare` found, which the build uses as it is.

    Attributes:
        spec: The spec with its choices typed and its paths absolute (the Olive routes run in a scratch
            folder, where a relative path would read as a hub id).
        source: The model converted (for a LoRA adapter its base, until the build merges the adapter in).
        adapter: The LoRA adapter, when the model is one.
        more: Further adapters kept apart beside it (``spec.more_adapters``), checked.
        estimate: The predicted peak memory.
        reference_dtype: What the parity check loads the source in: ``float32``, unless that alone would not
            fit in the memory available (then ``bfloat16``, compared more loosely:
            :data:`~slmops.toolkit.domain.parity.NEAR`, and the manifest says so).
        available_mib: Memory available when it was checked, MiB.
        memory_checked: Whether the estimate was checked against it.
    """

    spec: ConvertSpec
    source: SourceModel
    adapter: adapters.AdapterSource | None
    more: tuple[adapters.AdapterSource, ...]
    estimate: memory.MemoryEstimate
    reference_dtype: str
    available_mib: float
    memory_checked: bool

    @property
    def kept(self) -> adapters.AdapterSource | None:
        """The adapter, when it is kept apart from the build's weights."""
        return self.adapter if self.spec.keeps_lora else None


def prepare(spec: ConvertSpec, *, memory_check: bool = True) -> Prepared:
    """Check everything about ``spec`` before any work starts, once, and keep what was found.

    Args:
        spec: The conversion.
        memory_check: Also refuse when the predicted peak memory exceeds what is available.

    Raises:
        ModelFolderError: the source is not a Hugging Face model folder, or too little disk.
        UnsupportedArchitectureError: the builder cannot convert this architecture.
        InvalidOptionError: an unknown precision/method or an option out of range.
        InsufficientMemoryError: the conversion would not fit in the available memory.
    """
    spec = _check_choices(spec)
    source, adapter, more = _check_source(spec)
    _check_build(spec, source)
    available = available_mib()
    estimate = memory_estimate(spec, source, "float32")
    dtype = "float32" if estimate.peak_mib <= available else "bfloat16"
    if dtype != "float32":
        estimate = memory_estimate(spec, source, dtype)
    if memory_check and estimate.peak_mib > available:
        options = "; ".join(memory.shortfall_options(estimate, available, Method(spec.method)))
        raise InsufficientMemoryError(
            f"Converting {source.path.name} to {spec.precision} by the {spec.method} route needs about "
            f"{estimate.peak_mib / 1024:.1f} GiB of memory at its peak ({estimate.peak_step}; {estimate.basis}), "
            f"but {available / 1024:.1f} GiB is available. Nothing was started. Options: {options}.")
    resolved = replace(spec, model_dir=Path(spec.model_dir).resolve(), output_dir=Path(spec.output_dir),
                       quantize_from=Path(spec.quantize_from) if spec.quantize_from else None,
                       more_adapters=tuple(Path(p) for p in spec.more_adapters))
    return Prepared(resolved, source, adapter, more, estimate, dtype, available, memory_check)


def validate(spec: ConvertSpec, *, memory_check: bool = True) -> SourceModel:
    """:func:`prepare`'s checks, for a caller that only asks whether ``spec`` can be converted.

    Returns:
        The model converted (for a LoRA adapter, its base).
    """
    return prepare(spec, memory_check=memory_check).source


def _check_choices(spec: ConvertSpec) -> ConvertSpec:
    """``spec`` with its precision and method typed, after the checks that need only the spec."""
    try:
        precision, method = Precision(spec.precision), Method(spec.method)
    except ValueError as exc:
        raise InvalidOptionError(
            "precision/method", f"{spec.precision}/{spec.method}",
            f"precision in {[p.value for p in Precision]} and method in {[m.value for m in Method]}",
        ) from exc
    if spec.execution_provider not in _PROVIDERS:
        raise InvalidOptionError("execution_provider", spec.execution_provider, f"one of {sorted(_PROVIDERS)}")
    kept = "adapter_in_graph" if spec.adapter_in_graph else "keep_adapter"
    if spec.keeps_lora and not adapters.is_adapter(spec.model_dir):
        raise InvalidOptionError(kept, str(spec.model_dir),
                                 "a PEFT LoRA adapter folder (adapter_config.json) as the model")
    if spec.more_adapters and not spec.keep_adapter:
        raise InvalidOptionError("more_adapters", ", ".join(map(str, spec.more_adapters)), "only with --keep-adapter")
    if spec.adapter_in_graph and (spec.keep_adapter or precision not in {Precision.INT4, Precision.INT8}):
        # One graph holds one adapter; at FP32 a side branch computes what the merged build does.
        raise InvalidOptionError("adapter_in_graph", f"{precision}{' with --keep-adapter' * spec.keep_adapter}",
                                 "--precision int4 or int8, without --keep-adapter (one graph holds one adapter)")
    if spec.keeps_lora and precision is Precision.INT4 and spec.int4.rotate:
        # Rotation folds into the base's weights what the LoRA branch (a graph input) would also have to absorb.
        raise InvalidOptionError("rotate", True, f"off with --{kept.replace('_', '-')} (the adapter's matrices "
                                 "are not rotated)")
    if spec.keeps_lora and method is not Method.BUILDER:
        raise InvalidOptionError("method", str(method), "builder with --keep-adapter (the model builder "
                                 "builds the LoRA inputs)")
    return replace(spec, precision=precision, method=method)


def _check_source(spec: ConvertSpec) -> tuple[SourceModel, adapters.AdapterSource | None,
                                              tuple[adapters.AdapterSource, ...]]:
    """The model converted (an adapter's base), the adapter and the further adapters, each checked."""
    adapter, more = None, ()
    if adapters.is_adapter(spec.model_dir):  # a LoRA adapter: its base must be convertible (and match it)
        adapter = inspect_adapter(spec.model_dir, spec.base)
        if spec.keeps_lora:
            check_keepable(adapter, in_graph=spec.adapter_in_graph)
            more = _check_more_adapters(adapter, spec.more_adapters)
        source = check_source(adapter.base)
    elif spec.base is not None:
        raise InvalidOptionError("base", str(spec.base), "only with a LoRA adapter folder as the model")
    else:
        source = check_source(spec.model_dir)
        if spec.method is Method.BUILDER and (head := tied_flag_contradicts_head(source.path)):
            raise InconsistentCheckpointError(
                source.path, f"config.json says tie_word_embeddings true, but the weights store their own {head}, "
                "which differs from the embedding table (transformers 5 keeps the stored head, untied, while the "
                "builder follows the flag and uses the embedding table as the head: the build would fail its "
                "parity check)",
                "Set tie_word_embeddings to false in config.json (as transformers loads it), or convert with "
                "--method olive, which builds the model as transformers loads it.")
    # The stop token goes into genai_config.json, which ONNX Runtime GenAI refuses with a null one.
    if stop_tokens.resolve(spec.model_dir) is None:
        stop_tokens.require(source.path)
    return source, adapter, more


def _check_build(spec: ConvertSpec, source: SourceModel) -> None:
    """The options against the model, the output folder, and the disk."""
    spec.int4.validate()
    quantizes = spec.quantize_from if needs_quantizer(spec) else None
    artifacts.check_replaceable(spec.output_dir, "conversion", (MANIFEST, "genai_config.json", OLIVE_CONFIG), {
        "source model": spec.model_dir, "base model": source.path, "FP32 build it quantizes": quantizes})
    if spec.precision is Precision.FP16 and spec.execution_provider == "cpu":
        raise InvalidOptionError(
            "precision", "fp16",
            "a GPU target: FP16 is for GPUs and runs slowly or not at all on the CPU provider; "
            "pass --execution-provider cuda to build for a GPU, or choose int8/int4 for CPU",
        )
    plan = quant_plan(spec, source.hidden_size) if needs_quantizer(spec) else None
    if plan and (plan.lm_head_bits < 32 or plan.embedding_bits < 32) and source.hidden_size % plan.block_size:
        fits = [b for b in BLOCK_SIZES if source.hidden_size % b == 0]
        raise InvalidOptionError(
            "block_size", plan.block_size,
            f"a divisor of the model's hidden size {source.hidden_size} when the LM head or embedding table is "
            f"quantized ({fits or 'none fits: keep both in fp32'})",
        )
    weights = max(source.checkpoint_bytes, 4 * source.parameters, 1)
    free = shutil.disk_usage(Path(spec.output_dir).resolve().parent if Path(spec.output_dir).parent.exists()
                             else Path.cwd()).free
    # A conversion writes up to ~2x the FP32 weights (the FP32 build, then the quantized copy).
    if free < 2 * weights:
        raise ModelFolderError(
            spec.output_dir, f"only {free / 1e6:.0f} MB free, about {2 * weights / 1e6:.0f} MB needed",
            "Free some disk space or choose another --out.",
        )


def check_keepable(adapter: adapters.AdapterSource, *, in_graph: bool = False) -> None:
    """Refuse an adapter that cannot stay apart from its base.

    Only LoRA matrices on linear layers become graph inputs; a module saved whole
    (``modules_to_save``: a resized vocabulary, a retrained LM head) replaces base weights, and
    LoRA on the embedding table or LM head is not built as a side branch by the model builder.

    Trained token rows (peft's ``trainable_token_indices``) go into the base's table with
    ``in_graph`` (one graph, one fine-tune); an adapter file cannot carry them.

    Raises:
        InputError: the adapter saves modules whole or adapts the embeddings or the LM head, or (apart from the
            graph) trains token rows.
    """
    if not in_graph and token_rows(adapter.path):
        raise InputError(f"{adapter.path} trains token rows (trainable_token_indices), which an adapter file cannot "
                         "carry: convert it with --adapter-in-graph, or without --keep-adapter (merged).")
    whole = list(adapter.modules_to_save)
    outer = [name for name in adapter.target_modules if name in {"lm_head", "embed_tokens"}]
    if whole or outer:
        raise InputError(
            f"{adapter.path} cannot be kept apart from its base: it "
            + (f"saves {', '.join(whole)} whole" if whole else f"adapts {', '.join(outer)}")
            + ", which only a merge applies. Convert it without --keep-adapter (merged).")


def _check_more_adapters(first: adapters.AdapterSource,
                         folders: tuple[Path, ...]) -> tuple[adapters.AdapterSource, ...]:
    """Further adapters kept apart beside ``first``: keepable LoRA adapters of its base, on its modules, with other names.

    Raises:
        ModelFolderError, InputError: as :func:`~slmops.toolkit.weights.adapter_inspect.inspect_adapter`, or a module
            ``first`` does not adapt (the build has no LoRA input there).
        InvalidOptionError: two adapters of one folder name (their files would collide).
    """
    names, checked = {first.path.name}, []
    for folder in folders:
        other = inspect_adapter(folder, first.base)
        check_keepable(other)
        outside = sorted(set(other.target_modules) - set(first.target_modules))
        if outside:  # the build has LoRA inputs only where the first adapter has matrices
            raise InputError(f"{other.path} adapts {', '.join(outside)}, which {first.path.name} (the adapter the "
                             f"build's LoRA inputs come from) does not: put first an adapter whose modules cover "
                             f"the others' ({', '.join(sorted(set(first.target_modules) | set(outside)))}).")
        if other.path.name in names:
            raise InvalidOptionError("more_adapters", str(folder), f"adapter folders with distinct names "
                                     f"({other.path.name!r} is taken: its file would be {other.path.name}{ADAPTER_SUFFIX})")
        names.add(other.path.name)
        checked.append(other)
    return tuple(checked)
