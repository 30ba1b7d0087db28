"""Stage 1: convert a Hugging Face model to a quantized ONNX Runtime GenAI model.

Config first, run second: :func:`builder_command`, :func:`olive_command` and
:func:`build_olive_config` are pure; :func:`convert` validates, runs the tools through
:mod:`slmops.toolkit.core.workers`, and moves a finished build into place atomically
(:mod:`slmops.toolkit.core.artifacts`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from slmops.toolkit.core import artifacts, settings, workers
from slmops.toolkit.core.artifacts import MANIFEST, dir_size_mb, read_manifest
from slmops.toolkit.core.errors import (
    InconsistentCheckpointError,
    InputError,
    InsufficientMemoryError,
    InvalidOptionError,
    ModelFolderError,
    ToolFailedError,
    ToolTimeoutError,
    UnsupportedArchitectureError,
)
from slmops.toolkit.core.measure import available_mib, package_versions, timestamp
from slmops.toolkit.domain import adapters, memory, parity, stop_tokens
from slmops.toolkit.domain.options import (
    BLOCK_SIZES,
    TUTORIAL_SIZE_RATIO,
    Int4Algorithm,
    Int4Mix,
    Int4Options,
    Method,
    Precision,
)
from slmops.toolkit.domain.quantize import LoraJob, QuantizeJob, QuantPlan, weight_summary, write_onnx_adapter
from slmops.toolkit.domain.results.conversion import SCHEMA_VERSION as CONVERSION_SCHEMA_VERSION
from slmops.toolkit.domain.sources import SourceModel, fingerprint, inspect_source, tied_flag_contradicts_head
from slmops.toolkit.runtimes import reference

OLIVE_CONFIG = "finetuned_conversion_config.json"


@dataclass(frozen=True)
class ConvertSpec:
    """One conversion.

    Attributes:
        model_dir: Hugging Face model folder.
        output_dir: Where the ONNX model goes (replaced atomically on success).
        precision: Target weight precision.
        method: Route (builder, olive, olive-config).
        int4: INT4 options (used when ``precision`` is int4).
        execution_provider: ``cpu`` or ``cuda`` (FP16 needs a GPU provider).
        base: The base model's folder when ``model_dir`` is a LoRA adapter (default: the one
            the adapter's config names); the adapter is merged into it first.
        quantize_from: An FP32 build of this same source on the builder route (for example the
            run's ``fp32``): an INT8 or INT4 build our quantizer makes starts from it instead of
            exporting FP32 again. Used only when its manifest shows the same source fingerprint,
            the builder route and a passed parity check; otherwise the export runs as usual.
        keep_adapter: With a LoRA adapter as ``model_dir`` (builder route): build the base once
            with the LoRA matrices as graph inputs, and the adapter as a separate
            ``adapters/<name>.onnx_adapter`` file, instead of merging it into the weights. The
            build with its adapter active is checked against the merged model in transformers.
        more_adapters: With ``keep_adapter``: other LoRA adapters of the same base on (some of) the
            same modules, each written as its own adapter file for the same build and checked the
            same way against its own merged model.
    """

    model_dir: Path
    output_dir: Path
    precision: Precision = Precision.INT4
    method: Method = Method.BUILDER
    int4: Int4Options = field(default_factory=Int4Options)
    execution_provider: str = "cpu"
    base: Path | None = None
    quantize_from: Path | None = None
    keep_adapter: bool = False
    more_adapters: tuple[Path, ...] = ()


#: Where a build whose LoRA was kept apart holds its adapter files (``<name>.onnx_adapter``).
ADAPTERS_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"


@dataclass(frozen=True)
class ConvertResult:
    """A finished conversion: where it is and what its manifest says."""

    output_dir: Path
    manifest: dict

    @property
    def size_mb(self) -> float:
        """Size on disk of the converted model in MB."""
        return float(self.manifest["size_mb"])


_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def supported_architectures() -> list[str]:
    """The ``architectures`` the installed ONNX Runtime GenAI builder can convert.

    Read from the builder's source so the list follows the installed version.
    """
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "builder.py"
    if not source.is_file():
        return []
    return sorted(set(re.findall(r'architectures\[0\] == "(\w+)"', source.read_text())))


def needs_quantizer(spec: ConvertSpec) -> bool:
    """Whether ``spec`` is built as FP32 by the route and then quantized by :mod:`slmops.toolkit.domain.quantize`.

    INT8 always is (the 0.14 builder has no int8). INT4 always is on the builder route: the
    builder's own INT4 holds the whole FP32 model and its quantized copy in memory (6-7x a
    bf16 checkpoint), while its FP32 export followed by our tensor-by-tensor pass, which
    runs the same ONNX Runtime quantizer with the same settings, peaks near the checkpoint's
    size. On the Olive routes INT4 is when its options go beyond what the builder does
    itself, or on ``olive auto-opt`` (which takes no INT4 options) when they are not the
    defaults.
    """
    if spec.precision is Precision.INT8:
        return True
    if spec.precision is not Precision.INT4:
        return False
    if spec.method is Method.BUILDER:
        return True
    return not spec.int4.builder_native or (spec.method is Method.OLIVE and spec.int4 != Int4Options())


def route_precision(spec: ConvertSpec) -> Precision:
    """The precision the route itself builds (FP32 when our quantizer follows)."""
    return Precision.FP32 if needs_quantizer(spec) else spec.precision


def quant_plan(spec: ConvertSpec, hidden_size: int = 0) -> QuantPlan:
    """The :class:`~slmops.toolkit.domain.quantize.QuantPlan` for ``spec`` (when :func:`needs_quantizer`).

    INT8 is 8-bit weight-only ``MatMulNBits`` (symmetric, block 32) for every MatMul and
    the LM head, with an 8-bit embedding table (shared with the LM head when tied).

    Example:
        >>> quant_plan(ConvertSpec(Path("m"), Path("o"), Precision.INT8)).bits
        8
    """
    if spec.precision is Precision.INT8:
        table = 8 if not hidden_size or hidden_size % 32 == 0 else 32
        return QuantPlan(bits=8, algorithm="default", block_size=32, symmetric=True,
                         accuracy_level=spec.int4.accuracy_level, lm_head_bits=8, embedding_bits=table)
    o = spec.int4
    return QuantPlan(bits=4, algorithm=str(o.algorithm), block_size=o.block_size, symmetric=o.symmetric,
                     accuracy_level=o.accuracy_level, lm_head_bits=o.lm_head.bits, embedding_bits=o.embeddings.bits,
                     lm_head_with_body=o.builder_native, mix="" if o.mix is Int4Mix.NONE else str(o.mix),
                     rotate=o.rotate, calibration=str(Path(o.calibration).resolve()) if o.calibration else "")


def _builder_int4_options(int4: Int4Options) -> dict[str, object]:
    """The builder's own INT4 settings for a :attr:`Int4Options.builder_native` choice."""
    options: dict[str, object] = {
        "int4_block_size": int4.block_size,
        "int4_is_symmetric": int4.symmetric,
        "int4_accuracy_level": int4.accuracy_level,
    }
    if int4.algorithm is Int4Algorithm.RTN:
        # RTN would otherwise share an int4 table with the LM head on tied models.
        options |= {"int4_algo_config": "rtn", "shared_embeddings": False}
    return options


def builder_command(spec: ConvertSpec, output: Path, cache: Path,
                    kept: adapters.AdapterSource | None = None) -> list[str]:
    """The model builder's argv for ``spec``, through :mod:`slmops.toolkit.runtimes.genai_builder` (its lean export).

    With ``kept`` (a LoRA adapter kept apart), the builder reads the adapter's base and wraps it in
    peft with the adapter (``adapter_path``), so the graph holds the LoRA matrices beside the base's.

    Example:
        >>> builder_command(ConvertSpec(Path("m"), Path("o")), Path("o"), Path("c"))[4:6]
        ['-i', 'm']
    """
    command = workers.python_module(
        "slmops.toolkit.runtimes.genai_builder",
        "-i", str(kept.base if kept else spec.model_dir), "-o", str(output), "-p", str(route_precision(spec)),
        "-e", spec.execution_provider, "-c", str(cache),
    )
    extra = [f"adapter_path={kept.path}"] if kept else []
    return [*command, "--extra_options", "hf_token=false", "hf_remote=false", *extra]


def olive_command(spec: ConvertSpec, output: Path) -> list[str]:
    """The tutorial's method 1: ``olive auto-opt ... --use_model_builder``.

    Runs through :mod:`slmops.toolkit.runtimes.olive_cli`, which turns Olive's telemetry off before it starts.

    Example:
        >>> "--use_model_builder" in olive_command(ConvertSpec(Path("m"), Path("o")), Path("o"))
        True
    """
    return workers.python_module(
        "slmops.toolkit.runtimes.olive_cli", "auto-opt", "--model_name_or_path", str(spec.model_dir),
        "--device", "gpu" if spec.execution_provider == "cuda" else "cpu",
        "--provider", _PROVIDERS[spec.execution_provider], "--use_model_builder",
        "--precision", str(route_precision(spec)), "--output_path", str(output),
        "--log_level", "1", "--disable_telemetry",
    )


def build_olive_config(spec: ConvertSpec, output: Path, cache: Path) -> dict:
    """The tutorial's method 2: an Olive workflow with one ``ModelBuilder`` pass.

    The tutorial nests ``quantization_config`` under the pass; Olive 0.13 ignores that key
    with only a warning (so its block size would silently not apply) and takes the same
    settings as flat ``int4_*`` fields, which is what we write. Options the builder cannot do
    are applied afterwards by our quantizer, so the pass then builds FP32.

    Example:
        >>> build_olive_config(ConvertSpec(Path("m"), Path("o")), Path("o"), Path("c"))["passes"]["builder"]["type"]
        'ModelBuilder'
    """
    precision = route_precision(spec)
    builder_pass: dict = {"type": "ModelBuilder", "precision": str(precision)}
    if precision is Precision.INT4:
        options = _builder_int4_options(spec.int4)
        shared = options.pop("shared_embeddings", None)
        builder_pass |= options
        if shared is not None:
            builder_pass["extra_options"] = {"shared_embeddings": shared}
    return {
        "input_model": {"type": "HfModel", "model_path": str(spec.model_dir), "task": "text-generation"},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{
                    "device": "gpu" if spec.execution_provider == "cuda" else "cpu",
                    "execution_providers": [_PROVIDERS[spec.execution_provider]],
                }],
            }
        },
        "passes": {"builder": builder_pass},
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(cache),
        "output_dir": str(output),
        "log_severity_level": 1,
    }


def check_source(model_dir: str | os.PathLike[str]) -> SourceModel:
    """Describe a Hugging Face model folder, or say why this toolkit cannot convert it.

    Raises:
        ModelFolderError: not a Hugging Face model folder.
        UnsupportedArchitectureError: the builder cannot convert this architecture.
    """
    source = inspect_source(model_dir)
    supported = supported_architectures()
    if supported and source.architecture not in supported:
        raise UnsupportedArchitectureError(source.architecture, supported)
    return source


def memory_estimate(spec: ConvertSpec, source: SourceModel, reference_dtype: str = "float32") -> memory.MemoryEstimate:
    """The predicted peak memory of converting ``source`` (the adapter's base, for an adapter) by ``spec``.

    ``reference_dtype`` is what the parity check loads the source in (see :func:`reference_dtype`).
    """
    vocab = source.largest_tensor // source.hidden_size if source.hidden_size else 0
    return memory.estimate(
        parameters=source.parameters, largest_tensor=source.largest_tensor,
        checkpoint_bytes=source.checkpoint_bytes or 4 * source.parameters, method=Method(spec.method),
        route_precision=route_precision(spec), quantized=needs_quantizer(spec),
        adapter=adapters.is_adapter(spec.model_dir),
        parity_bytes_per_weight=4 if reference_dtype == "float32" else 2,
        parity_logits=vocab * 2 * parity.TEXT_POSITIONS)


def reference_dtype(spec: ConvertSpec, source: SourceModel, available: float) -> str:
    """The dtype the parity check loads the source in: FP32, unless that alone would not fit in ``available`` MiB.

    In bf16 the comparison is looser (:data:`~slmops.toolkit.domain.parity.NEAR`), and the manifest says so.
    """
    fp32 = memory_estimate(spec, source, "float32")
    return "float32" if fp32.peak_mib <= available else "bfloat16"


def check_memory(spec: ConvertSpec, source: SourceModel) -> memory.MemoryEstimate:
    """Refuse a conversion predicted to need more memory than is available now.

    Raises:
        InsufficientMemoryError: the prediction exceeds the available memory (the message
            gives the figures and the options).
    """
    free = available_mib()
    estimate = memory_estimate(spec, source, reference_dtype(spec, source, free))
    if estimate.peak_mib > free:
        options = "; ".join(memory.shortfall_options(estimate, free, Method(spec.method)))
        raise InsufficientMemoryError(
            f"Converting {source.path.name} to {spec.precision} by the {spec.method} route needs about "
            f"{estimate.peak_mib / 1024:.1f} GiB of memory at its peak ({estimate.peak_step}; {estimate.basis}), "
            f"but {free / 1024:.1f} GiB is available. Nothing was started. Options: {options}.")
    return estimate


def validate(spec: ConvertSpec, *, memory_check: bool = True) -> SourceModel:
    """Check everything about ``spec`` before any work starts.

    Args:
        spec: The conversion.
        memory_check: Also refuse when the predicted peak memory exceeds what is available.

    Raises:
        ModelFolderError: the source is not a Hugging Face model folder, or too little disk.
        UnsupportedArchitectureError: the builder cannot convert this architecture.
        InvalidOptionError: an unknown precision/method or an option out of range.
        InsufficientMemoryError: the conversion would not fit in the available memory.
    """
    try:
        precision, method = Precision(spec.precision), Method(spec.method)
    except ValueError as exc:
        raise InvalidOptionError(
            "precision/method", f"{spec.precision}/{spec.method}",
            f"precision in {[p.value for p in Precision]} and method in {[m.value for m in Method]}",
        ) from exc
    if spec.execution_provider not in _PROVIDERS:
        raise InvalidOptionError("execution_provider", spec.execution_provider, f"one of {sorted(_PROVIDERS)}")
    if spec.keep_adapter and not adapters.is_adapter(spec.model_dir):
        raise InvalidOptionError("keep_adapter", str(spec.model_dir),
                                 "a PEFT LoRA adapter folder (adapter_config.json) as the model")
    if spec.more_adapters and not spec.keep_adapter:
        raise InvalidOptionError("more_adapters", ", ".join(map(str, spec.more_adapters)), "only with --keep-adapter")
    if spec.keep_adapter and precision is Precision.INT4 and spec.int4.rotate:
        # Rotation folds into the base's weights what the LoRA branch (a graph input) would also have to absorb.
        raise InvalidOptionError("rotate", True, "off with --keep-adapter (the adapter's matrices are not rotated)")
    if spec.keep_adapter and method is not Method.BUILDER:
        raise InvalidOptionError("method", str(method), "builder with --keep-adapter (the model builder "
                                 "builds the LoRA inputs)")
    if adapters.is_adapter(spec.model_dir):  # a LoRA adapter: its base must be convertible (and match it)
        adapter = adapters.inspect_adapter(spec.model_dir, spec.base)
        if spec.keep_adapter:
            check_keepable(adapter)
            _check_more_adapters(adapter, spec.more_adapters)
        source = check_source(adapter.base)
    elif spec.base is not None:
        raise InvalidOptionError("base", str(spec.base), "only with a LoRA adapter folder as the model")
    else:
        source = check_source(spec.model_dir)
        if method is Method.BUILDER and (head := tied_flag_contradicts_head(source.path)):
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
    spec.int4.validate()
    quantizes = spec.quantize_from if needs_quantizer(replace(spec, precision=precision, method=method)) else None
    artifacts.check_replaceable(spec.output_dir, "conversion", (MANIFEST, "genai_config.json", OLIVE_CONFIG), {
        "source model": spec.model_dir, "base model": source.path, "FP32 build it quantizes": quantizes})
    if precision is Precision.FP16 and spec.execution_provider == "cpu":
        raise InvalidOptionError(
            "precision", "fp16",
            "a GPU target: FP16 is for GPUs and runs slowly or not at all on the CPU provider; "
            "pass --execution-provider cuda to build for a GPU, or choose int8/int4 for CPU",
        )
    spec = ConvertSpec(spec.model_dir, spec.output_dir, precision, method, spec.int4, spec.execution_provider, spec.base,
                       keep_adapter=spec.keep_adapter, more_adapters=spec.more_adapters)
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
    if memory_check:
        check_memory(spec, source)
    return source


#: Packages whose versions a manifest records.
_MANIFEST_PACKAGES = ("onnxruntime-genai", "onnxruntime", "olive-ai", "transformers", "torch", "foundry-local-sdk")


def _reusable_fp32(spec: ConvertSpec, source_fingerprint: str) -> Path | None:
    """``spec.quantize_from`` when the quantizer may start from it (see :class:`ConvertSpec`), else None."""
    folder = spec.quantize_from
    # A kept-apart build's FP32 has LoRA inputs, a merged one has none: neither stands in for the other.
    if folder is None or not needs_quantizer(spec) or spec.method is not Method.BUILDER or spec.keep_adapter:
        return None
    made = read_manifest(folder)
    same = (made.get("precision") == str(Precision.FP32) and made.get("method") == str(Method.BUILDER)
            and made.get("source_fingerprint") == source_fingerprint
            and (made.get("parity") or {}).get("verdict") == "pass" and (Path(folder) / "model.onnx").is_file())
    return Path(folder).resolve() if same else None


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


def fp32_reference(source: SourceModel, target: Path, source_fingerprint: str) -> tuple[float, str]:
    """Size in MB of the FP32 build of the same model, and where the figure comes from.

    A sibling ``fp32`` build of the same source (same fingerprint) is measured; otherwise
    the size is estimated as the source's parameter count times 4 bytes.
    """
    sibling = read_manifest(target.parent / str(Precision.FP32))
    if sibling.get("precision") == "fp32" and sibling.get("source_fingerprint") == source_fingerprint:
        return float(sibling["size_mb"]), f"measured ({target.parent / 'fp32'})"
    return source.parameters * 4 / 1e6, f"estimated ({source.parameters:,} parameters x 4 bytes)"


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
    from tqdm.auto import tqdm

    source = validate(spec, memory_check=memory_check)
    # Absolute: the Olive routes run in a scratch folder, where a relative path would read as a hub id.
    spec = ConvertSpec(Path(spec.model_dir).resolve(), Path(spec.output_dir), Precision(spec.precision),
                       Method(spec.method), spec.int4, spec.execution_provider,
                       quantize_from=Path(spec.quantize_from) if spec.quantize_from else None,
                       keep_adapter=spec.keep_adapter, more_adapters=tuple(Path(p) for p in spec.more_adapters))
    free_at_start = available_mib()
    dtype = reference_dtype(spec, source, free_at_start)
    predicted = memory_estimate(spec, source, dtype)
    adapter = None
    if adapters.is_adapter(spec.model_dir):  # merged once (cached); every route then converts the merged folder
        adapter = adapters.inspect_adapter(spec.model_dir, source.path)
        # Kept apart, the merge is still made: it is the reference the build with its adapter must match.
        spec = replace(spec, model_dir=adapters.merge(adapter))
        source = inspect_source(spec.model_dir)
    kept = adapter if spec.keep_adapter else None
    # Each further adapter's merge is its own reference (made before the build, so a bad one stops it early).
    more = [adapters.inspect_adapter(folder, kept.base) for folder in spec.more_adapters] if kept else []
    more_merged = [adapters.merge(other) for other in more]
    target = spec.output_dir.resolve()
    if dry_run and spec.method is not Method.OLIVE_CONFIG:
        raise InvalidOptionError("dry_run", True, "only with --method olive-config")
    target.parent.mkdir(parents=True, exist_ok=True)
    if dry_run:
        target.mkdir(parents=True, exist_ok=True)
        config = build_olive_config(spec, target, target.parent / ".olive-cache")
        artifacts.write_json(target / OLIVE_CONFIG, config)
        return ConvertResult(target, {"dry_run": True, "config": str(target / OLIVE_CONFIG)})

    steps = _steps(spec)
    bar = tqdm(total=len(steps), desc=f"convert {spec.precision}", disable=not progress, unit="step")
    bar.update()
    # Hash the source while the tools run (hashlib releases the GIL): ~1 s on a 540 MB model.
    hashing = ThreadPoolExecutor(max_workers=1)
    source_fingerprint = hashing.submit(fingerprint, source.path)
    artifacts.remove_stale(target.parent)  # scratch of a conversion that was killed
    scratch = artifacts.staging_dir(target, "building")
    try:
        # A write of ours that finds the disk full is a DiskFullError (a tool's own says so in its log).
        with artifacts.disk_full_as_error(target):
            staging = scratch / "model"
            logs = scratch / "logs"
            # Not named "fp32": Olive resolves config strings that name an existing path in its cwd.
            # A LoRA kept apart is rewritten from the route's output into staging, so the route writes elsewhere too.
            first = scratch / "route-output" if needs_quantizer(spec) or kept else staging
            runs: list[workers.ChildRun] = []
            bar.set_postfix_str(steps[1])
            start = time.perf_counter()
            reused = _reusable_fp32(spec, source_fingerprint.result())
            if reused is not None:
                first = reused  # read only: the quantizer writes into staging
            elif spec.method is Method.BUILDER:
                runs.append(workers.run_tool(builder_command(spec, first, scratch / "cache", kept),
                                           log_path=logs / "builder.log", name="onnxruntime_genai builder"))
            elif spec.method is Method.OLIVE:
                runs.append(workers.run_tool(olive_command(spec, first), log_path=logs / "olive.log",
                                           cwd=scratch, name="olive auto-opt"))
            else:
                config = build_olive_config(spec, first, scratch / "olive-cache")
                config_file = scratch / OLIVE_CONFIG
                config_file.write_text(json.dumps(config, indent=2))
                olive_run = workers.python_module("slmops.toolkit.runtimes.olive_cli", "run", "--config", str(config_file))
                runs.append(workers.run_tool(olive_run, log_path=logs / "olive.log", cwd=scratch, name="olive run"))
            stop = stop_tokens.require(spec.model_dir)
            if reused is None:  # the builder writes null where config.json and generation_config.json name none
                stop_tokens.complete_genai_config(first, stop)
            adapter_file = None
            if kept is not None:  # the LoRA matrices become graph inputs, their values an adapter file
                # The builder read the base's tokenizer; the merge holds the one the fine-tune uses (its own, if saved).
                for name in (*adapters.TOKENIZER_FILES, *adapters.TEMPLATE_FILES):
                    if (first / name).is_file() and (spec.model_dir / name).is_file():
                        shutil.copy2(spec.model_dir / name, first / name)
                lora_out = scratch / "lora-inputs" if needs_quantizer(spec) else staging
                adapter_file = scratch / ADAPTERS_DIR / f"{kept.path.name}{ADAPTER_SUFFIX}"
                job = LoraJob(str(first / "model.onnx"), str(lora_out / "model.onnx"), str(adapter_file))
                runs.append(workers.run_worker("slmops.toolkit.domain.quantize", "keep-lora-apart", job.to_json(),
                                               log_path=logs / "keep-lora-apart.log", name="LoRA kept apart"))
                inputs = runs[-1].result["lora_inputs"]
                for other in more:  # the same inputs, another adapter's values
                    write_onnx_adapter(adapter_file.parent / f"{other.path.name}{ADAPTER_SUFFIX}",
                                       adapters.lora_matrices(other, inputs))
                _copy_support_files(first, lora_out)
                first = lora_out
            bar.update()
            plan = None
            if needs_quantizer(spec):
                plan = quant_plan(spec, source.hidden_size)
                bar.set_postfix_str(steps[2])
                staging.mkdir()
                job = QuantizeJob(str(first / "model.onnx"), str(staging / "model.onnx"), plan)
                runs.append(workers.run_worker("slmops.toolkit.domain.quantize", "quantize", job.to_json(),
                                               log_path=logs / "quantize.log", name="weight quantizer"))
                _copy_support_files(first, staging)
                bar.update()
            wall = time.perf_counter() - start
            bar.set_postfix_str(steps[-1])
            if not (staging / "genai_config.json").is_file():
                raise ModelFolderError(staging, "the tool finished but wrote no genai_config.json",
                                       f"See the logs in {logs}.")
            if spec.method is Method.OLIVE_CONFIG:
                shutil.copy2(scratch / OLIVE_CONFIG, staging / OLIVE_CONFIG)
            if adapter_file is not None:
                shutil.move(str(adapter_file.parent), str(staging / ADAPTERS_DIR))
                adapter_file = staging / ADAPTERS_DIR / adapter_file.name
            # The source's stop tokens travel with the build (registration joins them to genai_config's EOS).
            if (source.path / "generation_config.json").is_file() and not (staging / "generation_config.json").exists():
                shutil.copy2(source.path / "generation_config.json", staging / "generation_config.json")
            manifest = _manifest(spec, source, staging, target, runs, wall, plan, source_fingerprint.result(), stop)
            manifest["memory"] = {
                **predicted.as_dict(), "available_mib_at_start": round(free_at_start, 1),
                "measured_peak_mib": manifest["peak_rss_mib"],
                "measured_steps": {run.log_path.stem: round(run.peak_rss_mib, 1) for run in runs},
                "checked": memory_check,
            }
            if reused is not None:
                manifest["quantized_from"] = str(reused)
            if adapter is not None:
                manifest["adapter"] = artifacts.read_json(spec.model_dir / adapters.MERGE_RECORD, adapter.describe())
            more_files = [staging / ADAPTERS_DIR / f"{other.path.name}{ADAPTER_SUFFIX}" for other in more]
            if adapter_file is not None:
                manifest["adapter"]["kept_apart"] = True
                manifest |= kept_apart_sizes(staging, [adapter_file, *more_files], source.parameters)
                if more:
                    manifest["more_adapters"] = [artifacts.read_json(merged / adapters.MERGE_RECORD, other.describe())
                                                 for other, merged in zip(more, more_merged)]
            bar.set_postfix_str("parity check against transformers")
            fp32_route = first if needs_quantizer(spec) and reused is None else None  # a reused one passed already
            manifest["parity"] = _parity_gate(spec, source, fp32_route, staging,
                                              logs / "parity.log", dtype, manifest["source_fingerprint"], adapter_file)
            for other, merged, file in zip(more, more_merged, more_files):
                bar.set_postfix_str(f"parity check of {other.path.name} against transformers")
                gate = _parity_gate(replace(spec, model_dir=merged), inspect_source(merged), None, staging,
                                    logs / f"parity-{other.path.name}.log", dtype, fingerprint(merged), file)
                manifest["memory"]["measured_steps"][f"parity-{other.path.name}"] = gate.pop("peak_rss_mib", 0.0)
                manifest["parity"].setdefault("more_adapters", {})[other.path.name] = gate
            parity_peak = manifest["parity"].pop("peak_rss_mib", None)
            if parity_peak is not None:  # the check is a step of the conversion: its peak counts
                manifest["memory"]["measured_steps"]["parity"] = parity_peak
                manifest["peak_rss_mib"] = manifest["memory"]["measured_peak_mib"] = max(manifest["peak_rss_mib"],
                                                                                      parity_peak)
            artifacts.write_json(staging / MANIFEST, manifest)
            artifacts.crash_point("convert-built")
            artifacts.swap_into_place(staging, target)
            bar.update()
    except ToolFailedError as exc:  # the log it names is in the scratch folder, about to go
        kept = _keep_logs(scratch / "logs", target)
        raise _relocated(exc, scratch / "logs", kept) from exc
    except BaseException:
        _keep_logs(scratch / "logs", target)
        raise
    finally:
        hashing.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(scratch, ignore_errors=True)
        bar.close()
    return ConvertResult(target, manifest)


def check_keepable(adapter: adapters.AdapterSource) -> None:
    """Refuse an adapter that cannot stay apart from its base.

    Only LoRA matrices on linear layers become graph inputs; a module saved whole
    (``modules_to_save``: a resized vocabulary, a retrained LM head) replaces base weights, and
    LoRA on the embedding table or LM head is not built as a side branch by the model builder.

    Raises:
        InputError: the adapter saves modules whole or adapts the embeddings or the LM head.
    """
    whole = list(adapter.modules_to_save)
    outer = [name for name in adapter.target_modules if name in {"lm_head", "embed_tokens"}]
    if whole or outer:
        raise InputError(
            f"{adapter.path} cannot be kept apart from its base: it "
            + (f"saves {', '.join(whole)} whole" if whole else f"adapts {', '.join(outer)}")
            + ", which only a merge applies. Convert it without --keep-adapter (merged).")


def kept_apart_sizes(build: Path, adapter_files: list[Path], parameters: int) -> dict:
    """The manifest's sizes of a build whose LoRA was kept apart.

    Args:
        build: The build folder (its ``model.onnx`` and data file are the base's weights).
        adapter_files: The ``.onnx_adapter`` files in ``build``, the build's own adapter first.
        parameters: The base model's parameter count.

    Returns:
        ``adapter_files`` (path relative to the build, name, bytes, and bits per weight of the
        base with that adapter), ``base_size_mb`` (the graph and its weights, MB), and
        ``bits_per_weight`` over the base's parameters counting the first adapter's bytes
        (``bits_per_weight_without_adapter`` without them).
    """
    base_bytes = sum(f.stat().st_size for f in build.glob("model.onnx*") if f.is_file())
    per_weight = 8 / parameters if parameters else 0.0
    files = [{"path": str(file.relative_to(build)), "name": file.stem, "bytes": file.stat().st_size,
              "bits_per_weight": round((base_bytes + file.stat().st_size) * per_weight, 3)} for file in adapter_files]
    return {
        "adapter_files": files,
        "base_size_mb": round(base_bytes / 1e6, 3),
        "bits_per_weight": files[0]["bits_per_weight"],
        "bits_per_weight_without_adapter": round(base_bytes * per_weight, 3),
    }


def _check_more_adapters(first: adapters.AdapterSource, folders: tuple[Path, ...]) -> None:
    """Further adapters kept apart beside ``first``: keepable LoRA adapters of its base, on its modules, with other names.

    Raises:
        ModelFolderError, InputError: as :func:`~slmops.toolkit.domain.adapters.inspect_adapter`, or a module
            ``first`` does not adapt (the build has no LoRA input there).
        InvalidOptionError: two adapters of one folder name (their files would collide).
    """
    names = {first.path.name}
    for folder in folders:
        other = adapters.inspect_adapter(folder, first.base)
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


def _keep_logs(logs: Path, target: Path) -> Path:
    """Move a failed conversion's logs out of its scratch folder (which is removed) and return where they went.

    They go to ``<home>/logs/convert-<parent>-<target>``, replacing that target's previous
    failure's, so failed runs leave one folder per target and no more.
    """
    kept = settings.home() / "logs" / f"convert-{target.parent.name}-{target.name}"
    if logs.is_dir():
        shutil.rmtree(kept, ignore_errors=True)
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(logs), str(kept))
    return kept


def _relocated(exc: ToolFailedError, logs: Path, kept: Path) -> ToolFailedError:
    """``exc`` naming its log where :func:`_keep_logs` moved it."""
    log = Path(exc.log_path)
    if log.is_relative_to(logs) and (kept / log.relative_to(logs)).exists():
        log = kept / log.relative_to(logs)
    if isinstance(exc, ToolTimeoutError):
        return ToolTimeoutError(exc.tool, exc.seconds, log)
    return ToolFailedError(exc.tool, exc.returncode, log, exc.detail)


def _parity_gate(spec: ConvertSpec, source: SourceModel, fp32_route: Path | None, build: Path, log: Path,
                 dtype: str = "float32", source_fingerprint: str = "", adapter_file: Path | None = None) -> dict:
    """Check the build (and the FP32 model a quantizer started from) against transformers; refuse a mismatch.

    With ``adapter_file`` (a LoRA kept apart) every candidate runs with that adapter active, and
    ``spec.model_dir`` is the merged fine-tune: the same tolerances apply as to a merged build.

    The FP32 model must match exactly (:data:`~slmops.toolkit.domain.parity.EXACT`; :data:`~slmops.toolkit.domain.parity.NEAR`
    when the reference had to be loaded in bf16 to fit); a quantized build within what quantization
    may change (:data:`~slmops.toolkit.domain.parity.QUANTIZED`, top-1 and KL).

    Returns:
        The manifest's ``parity`` entry: ``{"verdict", "checks": [record per build], "peak_rss_mib"}``.

    Raises:
        ParityError: a build is outside its tolerance (nothing is put in place).
    """
    if spec.execution_provider != "cpu":
        return {"verdict": "not checked", "checks": [],
                "reason": f"built for {spec.execution_provider}: this machine runs the CPU provider only"}
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
        checks.append(check.to_json())
    return {"verdict": str(parity.Verdict.PASS), "checks": checks, "wall_s": round(run.wall_s, 2),
            "peak_rss_mib": round(run.peak_rss_mib, 1), "steps_mib": result.steps}


def _manifest(spec: ConvertSpec, source: SourceModel, staging: Path, target: Path, runs: list[workers.ChildRun],
              wall: float, plan: QuantPlan | None, source_fingerprint: str, stop: stop_tokens.StopTokens) -> dict:
    size_mb = dir_size_mb(staging)
    if spec.precision is Precision.FP32:
        fp32_mb, fp32_from = size_mb, "this build"
    else:
        fp32_mb, fp32_from = fp32_reference(source, target, source_fingerprint)
    ratio = size_mb / fp32_mb if fp32_mb else None
    tutorial = TUTORIAL_SIZE_RATIO[spec.precision]
    return {
        "schema_version": CONVERSION_SCHEMA_VERSION,
        "model": source.path.name,
        "source_path": str(source.path),
        "source_fingerprint": source_fingerprint,
        "architecture": source.architecture,
        "parameters": source.parameters,
        "method": str(spec.method),
        "precision": str(spec.precision),
        "execution_provider": spec.execution_provider,
        "options": asdict(spec.int4) if spec.precision is Precision.INT4 else {},
        "quantizer": asdict(plan) if plan else None,
        "eos_token_id": list(stop.ids),
        "eos_token_id_from": stop.source,
        "weights": weight_summary(staging / "model.onnx"),
        "commands": [list(run.command) for run in runs],
        "wall_s": round(wall, 3),
        "tool_wall_s": [round(run.wall_s, 3) for run in runs],
        "peak_rss_mib": round(max(run.peak_rss_mib for run in runs), 1),
        "size_mb": round(size_mb, 3),
        "source_size_mb": round(source.checkpoint_bytes / 1e6, 2),
        "fp32_size_mb": round(fp32_mb, 3),
        "fp32_size_from": fp32_from,
        "size_ratio_vs_fp32": round(ratio, 4) if ratio else None,
        "tutorial_size_ratio": tutorial,
        "size_vs_tutorial": round(ratio / tutorial, 3) if ratio else None,
        "versions": package_versions(_MANIFEST_PACKAGES),
        "python": platform.python_version(),
        "created": timestamp(),
    }


def summary(manifests: list[dict]) -> list[dict]:
    """One flat row per build for tables: size against FP32 and the tutorial, where the weights went, cost, parity.

    Cost is wall time and peak RSS, beside the peak predicted before the build started. Parity is
    the build's own check against its source in transformers (top-1 agreement, the largest logit
    difference as a share of the logit range, KL in nats).
    """
    rows = []
    for m in manifests:
        weights = m.get("weights", {})
        rows.append({
            "precision": m["precision"], "method": m["method"], "size_mb": m["size_mb"],
            "x_fp32": m.get("size_ratio_vs_fp32"), "tutorial_x": m["tutorial_size_ratio"],
            "vs_tutorial": m.get("size_vs_tutorial"), "lm_head": weights.get("lm_head"),
            "embeddings": weights.get("embeddings"), "wall_s": m["wall_s"], "peak_rss_mib": m["peak_rss_mib"],
            "predicted_peak_mib": m.get("memory", {}).get("predicted_peak_mib"),
            **_parity_columns(m.get("parity")),
        })
    return rows


def _parity_columns(gate: dict | None) -> dict:
    """The conversion table's parity figures: the verdict, and how the build itself follows its source."""
    if not gate or not gate.get("checks"):
        return {"parity": (gate or {}).get("verdict", "not checked")}
    own = gate["checks"][-1]  # the build itself (after the FP32 model a quantizer started from)
    return {"parity": gate["verdict"], "top1_agreement_vs_source": own["top1_agreement"],
            "max_logit_diff_of_range": own["max_diff_of_range"], "kl_divergence_vs_source": own["kl_divergence"]}


def convert_all(model_dir: str | os.PathLike[str], precisions: list[str], out_dir: str | os.PathLike[str], *,
                method: Method | str = Method.BUILDER, int4: Int4Options | None = None,
                progress: bool = True, base: str | os.PathLike[str] | None = None,
                memory_check: bool = True) -> list[dict]:
    """Convert one model (or a LoRA adapter over ``base``) at several precisions into ``out_dir/<precision>``.

    Writes ``convert.json``, the list of manifests.

    Example:
        >>> [m["precision"] for m in convert_all(bundled_model(), ["fp32", "int4"], "outputs/run/models")]
        ['fp32', 'int4']
    """
    out = Path(out_dir)
    order = list(Precision)  # FP32 first, so the others can measure their size against it.
    chosen = sorted(dict.fromkeys(Precision(p) for p in precisions), key=order.index)
    fp32 = out / str(Precision.FP32) if Precision.FP32 in chosen else None  # built first: the others quantize it
    specs = [ConvertSpec(Path(model_dir), out / str(p), p, Method(method), int4 or Int4Options(),
                         base=Path(base) if base else None, quantize_from=fp32)
             for p in chosen]
    for spec in specs:  # every choice is checked before anything is built
        validate(spec, memory_check=memory_check)
    manifests = []
    for spec in specs:
        result = convert(spec, progress=progress, memory_check=memory_check)
        manifests.append({**result.manifest, "output_dir": str(result.output_dir)})
    artifacts.write_json(out / "convert.json", manifests)
    return manifests
