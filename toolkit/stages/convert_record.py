"""What a finished build records: its sizes, its parity check against the source, and the one :class:`Manifest`.

The conversion (:mod:`slmops.toolkit.stages.convert`) calls these once its files are staged;
:func:`conversion_rows` is the conversion table's rows, read from the manifests.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import workers
from slmops.toolkit.core.artifacts import dir_size_mb
from slmops.toolkit.core.measure import package_versions, timestamp
from slmops.toolkit.domain import memory, parity, stop_tokens
from slmops.toolkit.domain.options import TUTORIAL_SIZE_RATIO, Precision
from slmops.toolkit.domain.quant_plan import LoraBranched, QuantPlan
from slmops.toolkit.domain.results.conversion import (
    AdapterFile,
    Manifest,
    MemoryRecord,
    ParityGate,
    read_manifest,
)
from slmops.toolkit.domain.results.merge import MergeRecord
from slmops.toolkit.domain.sources import SourceModel
from slmops.toolkit.runtimes import reference
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.weights.lora_apart import lora_bytes
from slmops.toolkit.weights.weight_summary import weight_summary

#: Packages whose versions a manifest records.
_MANIFEST_PACKAGES = ("onnxruntime-genai", "onnxruntime", "olive-ai", "transformers", "torch", "foundry-local-sdk")


@dataclass(frozen=True)
class KeptApartSizes:
    """The sizes of a build whose LoRA was kept apart.

    Attributes:
        files: The ``.onnx_adapter`` files, the build's own adapter first.
        base_size_mb: The graph and its weights, MB (without the LoRA's, when they are in the graph).
        bits_per_weight: Bits per weight over the base's parameters, counting the first adapter's bytes.
        bits_per_weight_without_adapter: The same without them.
    """

    files: tuple[AdapterFile, ...]
    base_size_mb: float
    bits_per_weight: float
    bits_per_weight_without_adapter: float


@dataclass(frozen=True)
class BuildFacts:
    """What the build steps measured and made, for :func:`manifest`.

    Attributes:
        spec: The conversion (``model_dir`` the merged model, for an adapter).
        source: The model converted.
        source_fingerprint: Its fingerprint.
        staging: The finished build's folder (not yet in place).
        target: Where it goes.
        runs: The children that ran, in order.
        wall_s: Wall time of the build's tools, s.
        plan: The quantizer's plan, when it quantized.
        stop: The stop tokens written to ``genai_config.json``.
        estimate: The memory predicted before it started.
        available_mib: Memory available when it was checked.
        memory_checked: Whether the estimate was checked against it.
        reused: The FP32 build the quantizer started from, when one was reused.
        lora_branch: What the side-branch step made (a LoRA in the graph, quantized).
    """

    spec: ConvertSpec
    source: SourceModel
    source_fingerprint: str
    staging: Path
    target: Path
    runs: tuple[workers.ChildRun, ...]
    wall_s: float
    plan: QuantPlan | None
    stop: stop_tokens.StopTokens
    estimate: memory.MemoryEstimate
    available_mib: float
    memory_checked: bool
    reused: Path | None
    lora_branch: LoraBranched | None = None


def fp32_reference(source: SourceModel, target: Path, source_fingerprint: str) -> tuple[float, str]:
    """Size in MB of the FP32 build of the same model, and where the figure comes from.

    A sibling ``fp32`` build of the same source (same fingerprint) is measured; otherwise
    the size is estimated as the source's parameter count times 4 bytes.
    """
    sibling = read_manifest(target.parent / str(Precision.FP32))
    if sibling and sibling.precision == "fp32" and sibling.source_fingerprint == source_fingerprint:
        return sibling.size_mb, f"measured ({target.parent / 'fp32'})"
    return source.parameters * 4 / 1e6, f"estimated ({source.parameters:,} parameters x 4 bytes)"


def kept_apart_sizes(build: Path, adapter_files: list[Path], parameters: int) -> KeptApartSizes:
    """The manifest's sizes of a build whose LoRA was kept apart.

    Args:
        build: The build folder (its ``model.onnx`` and data file are the base's weights).
        adapter_files: The ``.onnx_adapter`` files in ``build``, the build's own adapter first.
        parameters: The base model's parameter count.
    """
    base_bytes = sum(f.stat().st_size for f in build.glob("model.onnx*") if f.is_file())
    per_weight = 8 / parameters if parameters else 0.0
    files = tuple(AdapterFile(str(file.relative_to(build)), file.stem, file.stat().st_size,
                              round((base_bytes + file.stat().st_size) * per_weight, 3)) for file in adapter_files)
    return KeptApartSizes(files, round(base_bytes / 1e6, 3), files[0].bits_per_weight,
                          round(base_bytes * per_weight, 3))


def in_graph_sizes(build: Path, parameters: int) -> KeptApartSizes:
    """The manifest's sizes of a build whose LoRA is a float side branch inside its graph (no adapter file).

    Args:
        build: The build folder (its ``model.onnx`` and data file hold the base's weights and the LoRA's).
        parameters: The base model's parameter count.
    """
    total = sum(f.stat().st_size for f in build.glob("model.onnx*") if f.is_file())
    base = total - lora_bytes(build / "model.onnx")
    per_weight = 8 / parameters if parameters else 0.0
    return KeptApartSizes((), round(base / 1e6, 3), round(total * per_weight, 3), round(base * per_weight, 3))


def parity_gate(spec: ConvertSpec, source: SourceModel, fp32_route: Path | None, build: Path, log: Path,
                dtype: str = "float32", source_fingerprint: str = "",
                adapter_file: Path | None = None) -> tuple[ParityGate, float | None]:
    """Check the build (and the FP32 model a quantizer started from) against transformers; refuse a mismatch.

    With ``adapter_file`` (a LoRA kept apart) every candidate runs with that adapter active, and
    ``spec.model_dir`` is the merged fine-tune: the same tolerances apply as to a merged build.

    The FP32 model must match exactly (:data:`~slmops.toolkit.domain.parity.EXACT`; :data:`~slmops.toolkit.domain.parity.NEAR`
    when the reference had to be loaded in bf16 to fit); a quantized build within what quantization
    may change (:data:`~slmops.toolkit.domain.parity.QUANTIZED`, top-1 and KL).

    Returns:
        The manifest's ``parity`` entry, and the check's peak RSS in MiB (None when it did not run).

    Raises:
        ParityError: a build is outside its tolerance (nothing is put in place).
    """
    if spec.execution_provider != "cpu":
        return ParityGate(reason=f"built for {spec.execution_provider}: this machine runs the CPU provider only"), None
    candidates = {str(Precision.FP32): fp32_route} if fp32_route is not None else {}
    candidates[str(spec.precision)] = build
    run, result = reference.check(spec.model_dir, candidates, log_path=log, dtype=dtype,
                                  fingerprint=source_fingerprint,
                                  adapters={label: adapter_file for label in candidates} if adapter_file else None,
                                  lean=(str(Precision.FP32),) if fp32_route is not None else ())
    exact = parity.EXACT if dtype == "float32" else parity.NEAR
    checks = []
    for label, folder in candidates.items():
        tolerance = exact if label == str(Precision.FP32) else parity.QUANTIZED
        check = reference.judged(result, label, tolerance)
        if check.verdict is not parity.Verdict.PASS:
            raise parity.refuse(check, source.architecture, str(spec.method), round(dir_size_mb(folder), 3))
        checks.append(check)
    gate = ParityGate(str(parity.Verdict.PASS), tuple(checks), round(run.wall_s, 2), steps_mib=dict(result.steps))
    return gate, round(run.peak_rss_mib, 1)


def manifest(facts: BuildFacts, gate: ParityGate, parity_peaks: dict[str, float], *, adapter: MergeRecord | None,
             more_adapters: tuple[MergeRecord, ...], apart: KeptApartSizes | None, size_mb: float) -> Manifest:
    """The build's one record, made once its files are staged and its parity checked.

    Args:
        facts: What the build steps measured and made.
        gate: The parity check.
        parity_peaks: The peak RSS of each parity check that ran (``parity``, ``parity-ADAPTER``), MiB.
        adapter: The LoRA adapter's merge record, for a fine-tune.
        more_adapters: The merge records of further adapters kept apart.
        apart: The sizes of a build whose LoRA was kept apart.
        size_mb: The staged build's size, MB (measured before the parity check).
    """
    spec, source = facts.spec, facts.source
    if spec.precision is Precision.FP32:
        fp32_mb, fp32_from = size_mb, "this build"
    else:
        fp32_mb, fp32_from = fp32_reference(source, facts.target, facts.source_fingerprint)
    ratio = size_mb / fp32_mb if fp32_mb else None
    tutorial = TUTORIAL_SIZE_RATIO[spec.precision]
    peak = round(max(run.peak_rss_mib for run in facts.runs), 1)
    if "parity" in parity_peaks:  # the check is a step of the conversion: its peak counts
        peak = max(peak, parity_peaks["parity"])
    estimate = facts.estimate
    return Manifest(
        model=source.path.name, source_path=str(source.path), source_fingerprint=facts.source_fingerprint,
        architecture=source.architecture, parameters=source.parameters, method=str(spec.method),
        precision=str(spec.precision), execution_provider=spec.execution_provider,
        options=spec.int4 if spec.precision is Precision.INT4 else None,
        quantizer=facts.plan,
        eos_token_id=tuple(facts.stop.ids), eos_token_id_from=facts.stop.source,
        weights=weight_summary(facts.staging / "model.onnx"),
        commands=tuple(tuple(run.command) for run in facts.runs), wall_s=round(facts.wall_s, 3),
        tool_wall_s=tuple(round(run.wall_s, 3) for run in facts.runs), peak_rss_mib=peak,
        size_mb=round(size_mb, 3), source_size_mb=round(source.checkpoint_bytes / 1e6, 2),
        fp32_size_mb=round(fp32_mb, 3), fp32_size_from=fp32_from,
        size_ratio_vs_fp32=round(ratio, 4) if ratio else None, tutorial_size_ratio=tutorial,
        size_vs_tutorial=round(ratio / tutorial, 3) if ratio else None,
        versions=package_versions(_MANIFEST_PACKAGES), python=platform.python_version(), created=timestamp(),
        memory=MemoryRecord(
            predicted_peak_mib=round(estimate.peak_mib, 1), peak_step=estimate.peak_step,
            steps={name: round(mb, 1) for name, mb in estimate.steps}, basis=estimate.basis,
            available_mib_at_start=round(facts.available_mib, 1), measured_peak_mib=peak,
            measured_steps={**{run.log_path.stem: round(run.peak_rss_mib, 1) for run in facts.runs}, **parity_peaks},
            checked=facts.memory_checked),
        parity=gate, quantized_from=str(facts.reused) if facts.reused is not None else None,
        adapter=adapter, more_adapters=more_adapters,
        adapter_files=apart.files if apart else (), base_size_mb=apart.base_size_mb if apart else None,
        bits_per_weight=apart.bits_per_weight if apart else None,
        bits_per_weight_without_adapter=apart.bits_per_weight_without_adapter if apart else None,
        lora_branch=facts.lora_branch)


def conversion_rows(manifests: list[Manifest]) -> list[dict]:
    """One flat row per build for tables: size against FP32 and the tutorial, where the weights went, cost, parity.

    Cost is wall time and peak RSS, beside the peak predicted before the build started. Parity is
    the build's own check against its source in transformers (top-1 agreement, the largest logit
    difference as a share of the logit range, KL in nats).
    """
    return [{
        "precision": m.precision, "method": m.method, "size_mb": m.size_mb, "x_fp32": m.size_ratio_vs_fp32,
        "tutorial_x": m.tutorial_size_ratio, "vs_tutorial": m.size_vs_tutorial,
        "lm_head": m.weights.lm_head, "embeddings": m.weights.embeddings, "wall_s": m.wall_s,
        "peak_rss_mib": m.peak_rss_mib, "predicted_peak_mib": m.memory.predicted_peak_mib or None,
        **_parity_columns(m.parity),
    } for m in manifests]


def _parity_columns(gate: ParityGate | None) -> dict:
    """The conversion table's parity figures: the verdict, and how the build itself follows its source."""
    own = gate.own_figures() if gate else None  # the build itself (after the FP32 model a quantizer started from)
    if own is None:
        return {"parity": gate.verdict if gate else "not checked"}
    return {"parity": gate.verdict, "top1_agreement_vs_source": own[0], "max_logit_diff_of_range": own[1],
            "kl_divergence_vs_source": own[2]}
