"""Stage 1: convert a Hugging Face model to a quantized ONNX Runtime GenAI model.

Config first, run second: :mod:`~slmops.toolkit.stages.convert_plan` holds the spec and the pure
commands and config of each route; :func:`~slmops.toolkit.stages.convert_checks.prepare` checks
everything once; :func:`build` then runs named steps (merge the adapter, run the route, keep the
LoRA apart, quantize, stage the files, check parity, record the manifest, move into place) through
:mod:`slmops.toolkit.core.workers` in a scratch folder, and moves a finished build into place
atomically (:mod:`slmops.toolkit.core.artifacts`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, workers
from slmops.toolkit.core.artifacts import MANIFEST, dir_size_mb
from slmops.toolkit.core.errors import InvalidOptionError, ModelFolderError
from slmops.toolkit.domain import adapters, stop_tokens
from slmops.toolkit.domain.options import Int4Options, Method, Precision
from slmops.toolkit.domain.quant_plan import LoraBranched, LoraBranchJob, LoraJob, LoraKept, QuantizeJob, QuantPlan
from slmops.toolkit.domain.results.conversion import (
    CONVERSIONS,
    Manifest,
    read_manifest,
    write_conversions,
    write_manifest,
)
from slmops.toolkit.domain.sources import SourceModel, fingerprint
from slmops.toolkit.stages.convert_checks import (
    Prepared,
    prepare,
)
from slmops.toolkit.stages.convert_plan import (
    ADAPTER_SUFFIX,
    ADAPTERS_DIR,
    OLIVE_CONFIG,
    ConvertSpec,
    build_olive_config,
    builder_command,
    needs_quantizer,
    olive_command,
    quant_plan,
    route_precision,
)
from slmops.toolkit.stages.convert_record import (
    BuildFacts,
    in_graph_sizes,
    kept_apart_sizes,
    manifest,
    parity_gate,
)
from slmops.toolkit.stages.convert_workspace import Workspace, workspace
from slmops.toolkit.weights.adapter_merge import merge
from slmops.toolkit.weights.checkpoints import inspect_source
from slmops.toolkit.weights.lora_apart import lora_matrices, split_token_rows, token_rows, write_onnx_adapter


@dataclass(frozen=True)
class ConvertResult:
    """A finished conversion: where it is and what its manifest says.

    Attributes:
        output_dir: The build's folder.
        manifest: Its manifest (None for a dry run).
        olive_config: The Olive config a dry run wrote (None otherwise).
    """

    output_dir: Path
    manifest: Manifest | None
    olive_config: Path | None = None

    @property
    def size_mb(self) -> float:
        """Size on disk of the converted model in MB."""
        return self.manifest.size_mb if self.manifest else 0.0


@dataclass(frozen=True)
class _Job:
    """A prepared conversion with its adapters merged: what the build steps read.

    Attributes:
        prepared: What :func:`prepare` found.
        spec: The spec; for a LoRA adapter, ``model_dir`` is the merged model (the reference the build must match).
        source: The model converted (the merged one, for an adapter).
        more_merged: Each further adapter kept apart, merged (its own parity reference).
    """

    prepared: Prepared
    spec: ConvertSpec
    source: SourceModel
    more_merged: tuple[Path, ...] = ()

    @property
    def more(self) -> tuple[adapters.AdapterSource, ...]:
        """The further adapters kept apart beside the first."""
        return self.prepared.more if self.prepared.kept else ()


def convert(spec: ConvertSpec, *, progress: bool = True, dry_run: bool = False,
            memory_check: bool = True) -> ConvertResult:
    """Convert ``spec.model_dir`` to an ONNX Runtime GenAI model in ``spec.output_dir``.

    The model is built in a temporary folder beside the target and moved into place
    only when every step succeeded, so a failure or Ctrl-C leaves the target as it was.
    A ``manifest.json`` in the output records route, options, versions, wall time,
    peak RSS, size (also against the FP32 build and the tutorial's table), where the
    weights went, and the source's fingerprint.

    Args:
        spec: What to convert and how.
        progress: Show a progress bar over the steps.
        dry_run: With the ``olive-config`` method, write the Olive config to
            ``output_dir`` and stop.
        memory_check: Refuse before starting when the predicted peak memory exceeds what
            is available (the prediction is recorded in the manifest either way).

    Raises:
        SlmopsError: a specific subclass for bad input (before any work) or a tool failure.

    Example:
        >>> convert(ConvertSpec(bundled_model(), Path("out/int4"))).size_mb
        203.4
    """
    return build(prepare(spec, memory_check=memory_check), progress=progress, dry_run=dry_run)


def build(prepared: Prepared, *, progress: bool = True, dry_run: bool = False) -> ConvertResult:
    """Build a conversion :func:`prepare` checked: the steps of :func:`convert`, each named, none checking again."""
    if dry_run and prepared.spec.method is not Method.OLIVE_CONFIG:
        raise InvalidOptionError("dry_run", True, "only with --method olive-config")
    job = _merge_adapters(prepared)
    target = job.spec.output_dir.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if dry_run:
        target.mkdir(parents=True, exist_ok=True)
        config = artifacts.write_json(target / OLIVE_CONFIG, build_olive_config(job.spec, target,
                                                                                target.parent / ".olive-cache"))
        return ConvertResult(target, None, config)
    with workspace(target, f"convert {job.spec.precision}", _steps(job.spec), job.source.path, progress) as work:
        start = time.perf_counter()
        first, reused = _run_route(job, work)
        stop = stop_tokens.require(job.spec.model_dir)
        if reused is None:  # the builder writes null where config.json and generation_config.json name none
            stop_tokens.complete_genai_config(first, stop)
        first, adapter_file = _keep_lora_apart(job, work, first)
        work.bar.update()
        plan = _quantize(job, work, first)
        branched = _side_branch(job, work, first)
        facts = BuildFacts(job.spec, job.source, work.source_fingerprint.result(), work.staging, target,
                           tuple(work.runs), time.perf_counter() - start, plan, stop, prepared.estimate,
                           prepared.available_mib, prepared.memory_checked, reused, branched)
        work.step(work.steps[-1])
        adapter_file = _stage_files(job, work, adapter_file)
        built = _record(job, work, facts, first if needs_quantizer(job.spec) and reused is None else None,
                        adapter_file)
        write_manifest(work.staging, built)
        artifacts.crash_point("convert-built")
        artifacts.swap_into_place(work.staging, target)
        work.bar.update()
    return ConvertResult(target, built)


def _merge_adapters(prepared: Prepared) -> _Job:
    """Step: merge a LoRA adapter into its base (once; cached), so every route converts the merged folder.

    Kept apart, the merge is still made: it is the reference the build with its adapter must match; each
    further adapter's merge is its own reference (made before the build, so a bad one stops it early).
    """
    if prepared.adapter is None:
        return _Job(prepared, prepared.spec, prepared.source)
    spec = replace(prepared.spec, model_dir=merge(prepared.adapter))
    more_merged = tuple(merge(other) for other in prepared.more) if prepared.kept else ()
    return _Job(prepared, spec, inspect_source(spec.model_dir), more_merged)


def _run_route(job: _Job, work: Workspace) -> tuple[Path, Path | None]:
    """Step: the route builds the model (FP32 when the quantizer follows), unless a checked FP32 build is reused.

    Returns:
        The route's output folder, and the FP32 build reused in its place (read only), if any.
    """
    spec = job.spec
    # Not named "fp32": Olive resolves config strings that name an existing path in its cwd.
    # A LoRA kept apart is rewritten from the route's output into staging, so the route writes elsewhere too.
    first = work.scratch / "route-output" if needs_quantizer(spec) or job.prepared.kept else work.staging
    work.step(work.steps[1])
    reused = _reusable_fp32(spec, work.source_fingerprint.result())
    if reused is not None:
        return reused, reused  # the quantizer writes into staging
    kept = job.prepared.kept
    if kept is not None and token_rows(kept.path):  # trained token rows go into the base's table, as a merge puts them
        kept = split_token_rows(kept, work.scratch / "token-rows")
    if spec.method is Method.BUILDER:
        work.runs.append(workers.run_tool(builder_command(spec, first, work.scratch / "cache", kept),
                                          log_path=work.logs / "builder.log", name="onnxruntime_genai builder"))
    elif spec.method is Method.OLIVE:
        work.runs.append(workers.run_tool(olive_command(spec, first), log_path=work.logs / "olive.log",
                                          cwd=work.scratch, name="olive auto-opt"))
    else:
        config_file = work.scratch / OLIVE_CONFIG
        config_file.write_text(json.dumps(build_olive_config(spec, first, work.scratch / "olive-cache"), indent=2))
        olive_run = workers.python_module("slmops.toolkit.runtimes.olive_cli", "run", "--config", str(config_file))
        work.runs.append(workers.run_tool(olive_run, log_path=work.logs / "olive.log", cwd=work.scratch,
                                          name="olive run"))
    return first, None


def _reusable_fp32(spec: ConvertSpec, source_fingerprint: str) -> Path | None:
    """``spec.quantize_from`` when the quantizer may start from it (see :class:`ConvertSpec`), else None."""
    folder = spec.quantize_from
    # A kept-apart build's FP32 has LoRA inputs, a merged one has none: neither stands in for the other.
    if folder is None or not needs_quantizer(spec) or spec.method is not Method.BUILDER or spec.keeps_lora:
        return None
    made = read_manifest(folder)
    same = (made is not None and made.precision == str(Precision.FP32) and made.method == str(Method.BUILDER)
            and made.source_fingerprint == source_fingerprint and made.parity is not None and made.parity.passed
            and (Path(folder) / "model.onnx").is_file())
    return Path(folder).resolve() if same else None


def _keep_lora_apart(job: _Job, work: Workspace, first: Path) -> tuple[Path, Path | None]:
    """Step (a LoRA kept apart): its matrices become graph inputs, their values an adapter file per adapter.

    With ``adapter_in_graph`` the matrices stay constants of the graph's LoRA branch, stored in FP16 and
    read through a Cast to float (the quantizer leaves the branch alone), and no adapter file is made.

    Returns:
        The folder the build continues from, and the build's own adapter file (None when none is made).
    """
    kept, spec = job.prepared.kept, job.spec
    if kept is None:
        return first, None
    # The builder read the base's tokenizer; the merge holds the one the fine-tune uses (its own, if saved).
    for name in (*adapters.TOKENIZER_FILES, *adapters.TEMPLATE_FILES):
        if (first / name).is_file() and (spec.model_dir / name).is_file():
            shutil.copy2(spec.model_dir / name, first / name)
    if spec.adapter_in_graph:
        side_branch = work.scratch / "lora-fp16"
        job = LoraJob(str(first / "model.onnx"), str(side_branch / "model.onnx"), "")
        work.runs.append(workers.run_worker("slmops.toolkit.weights.lora_apart", "lora-fp16", codec.dump(job),
                                            log_path=work.logs / "lora-fp16.log", name="LoRA side branch in FP16"))
        _copy_support_files(first, side_branch)
        return side_branch, None
    lora_out = work.scratch / "lora-inputs" if needs_quantizer(spec) else work.staging
    adapter_file = work.scratch / ADAPTERS_DIR / f"{kept.path.name}{ADAPTER_SUFFIX}"
    lora = LoraJob(str(first / "model.onnx"), str(lora_out / "model.onnx"), str(adapter_file))
    work.runs.append(workers.run_worker("slmops.toolkit.weights.lora_apart", "keep-lora-apart", codec.dump(lora),
                                        log_path=work.logs / "keep-lora-apart.log", name="LoRA kept apart"))
    inputs = codec.load(LoraKept, work.runs[-1].result).lora_inputs
    for other in job.more:  # the same inputs, another adapter's values
        write_onnx_adapter(adapter_file.parent / f"{other.path.name}{ADAPTER_SUFFIX}",
                           lora_matrices(other, inputs))
    _copy_support_files(first, lora_out)
    return lora_out, adapter_file


def _quantize(job: _Job, work: Workspace, first: Path) -> QuantPlan | None:
    """Step (INT8, and INT4 beyond the route's own): the toolkit's quantizer writes the build into staging."""
    if not needs_quantizer(job.spec):
        return None
    plan = quant_plan(job.spec, job.source.hidden_size)
    work.step(work.steps[2])
    work.staging.mkdir()
    # A LoRA in the graph is rewritten once its base is quantized (:func:`_side_branch`), from scratch into staging.
    out = work.scratch / "quantized" if job.spec.adapter_in_graph else work.staging
    quantize = QuantizeJob(str(first / "model.onnx"), str(out / "model.onnx"), plan)
    work.runs.append(workers.run_worker("slmops.toolkit.weights.quantize", "quantize", codec.dump(quantize),
                                        log_path=work.logs / "quantize.log", name="weight quantizer"))
    _copy_support_files(first, work.staging)
    work.bar.update()
    return plan


def _side_branch(job: _Job, work: Workspace, fp32: Path) -> LoraBranched | None:
    """Step (a LoRA in the graph, quantized): the base's rounding error made up for in the side branch.

    :mod:`slmops.toolkit.weights.lora_branch` adds the error's rank-``error_rank`` part to each branch and stores the
    branch in ``branch_bits``, from the quantized graph into staging (``fp32``: the graph the quantizer read).

    Returns:
        What it made, for the manifest (None: no side branch to rewrite).
    """
    spec = job.spec
    if not spec.adapter_in_graph or not needs_quantizer(spec):
        return None
    branch = LoraBranchJob(str(work.scratch / "quantized" / "model.onnx"), str(work.staging / "model.onnx"),
                           str(fp32 / "model.onnx"), spec.error_rank, spec.branch_bits,
                           str(spec.branch_layout))
    run = workers.run_worker("slmops.toolkit.weights.lora_branch", "lora-side-branch", codec.dump(branch),
                             log_path=work.logs / "lora-side-branch.log", name="LoRA side branch")
    work.runs.append(run)
    return codec.load(LoraBranched, run.result)


def _stage_files(job: _Job, work: Workspace, adapter_file: Path | None) -> Path | None:
    """Step: the build's own files beside its weights (Olive config, adapter files, the source's stop tokens).

    Returns:
        Where the build's own adapter file now is (None when nothing is kept apart).
    """
    staging = work.staging
    if not (staging / "genai_config.json").is_file():
        raise ModelFolderError(staging, "the tool finished but wrote no genai_config.json",
                               f"See the logs in {work.logs}.")
    if job.spec.method is Method.OLIVE_CONFIG:
        shutil.copy2(work.scratch / OLIVE_CONFIG, staging / OLIVE_CONFIG)
    if adapter_file is not None:
        shutil.move(str(adapter_file.parent), str(staging / ADAPTERS_DIR))
        adapter_file = staging / ADAPTERS_DIR / adapter_file.name
    # The source's stop tokens travel with the build (registration joins them to genai_config's EOS).
    source = job.source.path
    if (source / "generation_config.json").is_file() and not (staging / "generation_config.json").exists():
        shutil.copy2(source / "generation_config.json", staging / "generation_config.json")
    return adapter_file


def _record(job: _Job, work: Workspace, facts: BuildFacts, fp32_route: Path | None,
            adapter_file: Path | None) -> Manifest:
    """Step: check parity against transformers (each adapter kept apart too), then make the build's manifest."""
    staging, prepared = work.staging, job.prepared
    size_mb = dir_size_mb(staging)
    more_files = [staging / ADAPTERS_DIR / f"{other.path.name}{ADAPTER_SUFFIX}" for other in job.more]
    apart = kept_apart_sizes(staging, [adapter_file, *more_files], job.source.parameters) if adapter_file else None
    if job.spec.adapter_in_graph:
        apart = in_graph_sizes(staging, job.source.parameters)
    adapter = None
    if prepared.adapter is not None:
        adapter = adapters.read_merge_record(job.spec.model_dir, prepared.adapter)
        if adapter_file is not None:
            adapter = replace(adapter, kept_apart=True)
        elif job.spec.adapter_in_graph:
            adapter = replace(adapter, kept_apart=True)  # no adapter file: in the graph
    more_records = tuple(adapters.read_merge_record(merged, other)
                         for other, merged in zip(job.more, job.more_merged)) if adapter_file else ()
    work.step("parity check against transformers")
    gate, peak = parity_gate(job.spec, job.source, fp32_route, staging, work.logs / "parity.log",
                             prepared.reference_dtype, facts.source_fingerprint, adapter_file)
    peaks, more_gates = {}, {}
    for other, merged, file in zip(job.more, job.more_merged, more_files):
        work.step(f"parity check of {other.path.name} against transformers")
        more_gates[other.path.name], other_peak = parity_gate(
            replace(job.spec, model_dir=merged), inspect_source(merged), None, staging,
            work.logs / f"parity-{other.path.name}.log", prepared.reference_dtype, fingerprint(merged), file)
        peaks[f"parity-{other.path.name}"] = other_peak or 0.0
    if peak is not None:
        peaks["parity"] = peak
    gate = replace(gate, more_adapters=more_gates) if more_gates else gate
    return manifest(facts, gate, peaks, adapter=adapter, more_adapters=more_records, apart=apart, size_mb=size_mb)


def _copy_support_files(source: Path, target: Path) -> None:
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith("model.onnx") and item.name != MANIFEST:
            shutil.copy2(item, target / item.name)


def _steps(spec: ConvertSpec) -> list[str]:
    steps = {Method.BUILDER: "model builder", Method.OLIVE: "olive auto-opt", Method.OLIVE_CONFIG: "olive run"}
    names = ["validate", f"{steps[spec.method]} ({route_precision(spec)})"]
    if needs_quantizer(spec):
        names.append(f"quantize to {spec.precision}")
    return [*names, "manifest, move into place"]


def convert_all(model_dir: str | os.PathLike[str], precisions: list[str], out_dir: str | os.PathLike[str], *,
                method: Method | str = Method.BUILDER, int4: Int4Options | None = None,
                progress: bool = True, base: str | os.PathLike[str] | None = None,
                memory_check: bool = True) -> list[Manifest]:
    """Convert one model (or a LoRA adapter over ``base``) at several precisions into ``out_dir/<precision>``.

    Every choice is checked before anything is built, once. Writes ``convert.json``, the list of manifests.

    Example:
        >>> [m.precision for m in convert_all(bundled_model(), ["fp32", "int4"], "outputs/run/models")]
        ['fp32', 'int4']
    """
    out = Path(out_dir)
    order = list(Precision)  # FP32 first, so the others can measure their size against it.
    chosen = sorted(dict.fromkeys(Precision(p) for p in precisions), key=order.index)
    fp32 = out / str(Precision.FP32) if Precision.FP32 in chosen else None  # built first: the others quantize it
    prepared = [prepare(ConvertSpec(Path(model_dir), out / str(p), p, Method(method), int4 or Int4Options(),
                                    base=Path(base) if base else None, quantize_from=fp32), memory_check=memory_check)
                for p in chosen]
    manifests = []
    for one in prepared:
        result = build(one, progress=progress)
        manifests.append(replace(result.manifest, output_dir=str(result.output_dir)))
    write_conversions(out / CONVERSIONS, manifests)
    return manifests

