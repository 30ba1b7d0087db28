"""Stage 1: convert a Hugging Face model to a quantized ONNX Runtime GenAI model.

Config first, run second: :func:`builder_command`, :func:`olive_command` and
:func:`build_olive_config` are pure; :func:`convert` validates, runs the tools through
:mod:`toolkit.tools`, and moves a finished build into place atomically.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from toolkit import tools
from toolkit.errors import InvalidOptionError, ModelFolderError, UnsupportedArchitectureError
from toolkit.models import SourceModel, fingerprint, inspect_source

MANIFEST = "manifest.json"
OLIVE_CONFIG = "finetuned_conversion_config.json"


class Precision(StrEnum):
    """Weight precision of the converted model."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"


class Method(StrEnum):
    """Conversion route: the builder directly, or the tutorial's two Olive methods."""

    BUILDER = "builder"
    OLIVE = "olive"
    OLIVE_CONFIG = "olive-config"


#: The tutorial's size table, relative to FP32.
TUTORIAL_SIZE_RATIO: dict[Precision, float] = {
    Precision.FP32: 1.0, Precision.FP16: 0.5, Precision.INT8: 0.25, Precision.INT4: 0.125,
}

#: What the tutorial says each precision is for.
TUTORIAL_ADVICE: dict[Precision, str] = {
    Precision.FP32: "reference quality; largest and slowest",
    Precision.FP16: "best quality at half size; for GPUs",
    Precision.INT8: "good quality, very fast; balanced",
    Precision.INT4: "acceptable quality, fastest; constrained devices (start here)",
}

_BLOCK_SIZES = (16, 32, 64, 128, 256)
_ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Int4Options:
    """INT4 (MatMulNBits) quantization options; defaults are the builder's.

    Attributes:
        block_size: Weights per quantization block (16, 32, 64, 128 or 256).
        symmetric: Symmetric int4 (True) or asymmetric uint4 with zero points.
        accuracy_level: Compute type of the int4 MatMul: 4 int8, 3 bf16, 2 fp16, 1 fp32, 0 unset.
    """

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def validate(self) -> None:
        """Raise :class:`InvalidOptionError` for an option out of range."""
        if self.block_size not in _BLOCK_SIZES:
            raise InvalidOptionError("block_size", self.block_size, f"one of {_BLOCK_SIZES}")
        if self.accuracy_level not in _ACCURACY_LEVELS:
            raise InvalidOptionError("accuracy_level", self.accuracy_level, f"one of {_ACCURACY_LEVELS}")


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
    """

    model_dir: Path
    output_dir: Path
    precision: Precision = Precision.INT4
    method: Method = Method.BUILDER
    int4: Int4Options = field(default_factory=Int4Options)
    execution_provider: str = "cpu"


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


def builder_command(spec: ConvertSpec, output: Path, cache: Path) -> list[str]:
    """The ``python -m onnxruntime_genai.models.builder`` argv for ``spec``.

    INT8 is built as FP32 here and quantized afterwards (the 0.14 builder has no int8).

    Example:
        >>> builder_command(ConvertSpec(Path("m"), Path("o")), Path("o"), Path("c"))[3:5]
        ['-i', 'm']
    """
    precision = Precision.FP32 if spec.precision is Precision.INT8 else spec.precision
    command = tools.python_module(
        "onnxruntime_genai.models.builder",
        "-i", str(spec.model_dir), "-o", str(output), "-p", str(precision),
        "-e", spec.execution_provider, "-c", str(cache),
    )
    extra = ["hf_token=false", "hf_remote=false"]
    if spec.precision is Precision.INT4:
        extra += [
            f"int4_block_size={spec.int4.block_size}",
            f"int4_is_symmetric={str(spec.int4.symmetric).lower()}",
            f"int4_accuracy_level={spec.int4.accuracy_level}",
        ]
    return [*command, "--extra_options", *extra]


def olive_command(spec: ConvertSpec, output: Path) -> list[str]:
    """The tutorial's method 1: ``olive auto-opt ... --use_model_builder``.

    Example:
        >>> "--use_model_builder" in olive_command(ConvertSpec(Path("m"), Path("o")), Path("o"))
        True
    """
    return tools.python_module(
        "olive", "auto-opt", "--model_name_or_path", str(spec.model_dir),
        "--device", "gpu" if spec.execution_provider == "cuda" else "cpu",
        "--provider", _PROVIDERS[spec.execution_provider], "--use_model_builder",
        "--precision", str(spec.precision), "--output_path", str(output),
        "--log_level", "1", "--disable_telemetry",
    )


def build_olive_config(spec: ConvertSpec, output: Path, cache: Path) -> dict:
    """The tutorial's method 2: an Olive workflow with one ``ModelBuilder`` pass.

    The tutorial nests ``quantization_config`` under the pass; Olive 0.13's pass takes
    the same settings as flat ``int4_*`` fields, which is what we write.

    Example:
        >>> build_olive_config(ConvertSpec(Path("m"), Path("o")), Path("o"), Path("c"))["passes"]["builder"]["type"]
        'ModelBuilder'
    """
    builder_pass: dict = {"type": "ModelBuilder", "precision": str(spec.precision)}
    if spec.precision is Precision.INT4:
        builder_pass |= {
            "int4_block_size": spec.int4.block_size,
            "int4_is_symmetric": spec.int4.symmetric,
            "int4_accuracy_level": spec.int4.accuracy_level,
        }
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


def validate(spec: ConvertSpec) -> SourceModel:
    """Check everything about ``spec`` before any work starts.

    Raises:
        ModelFolderError: the source is not a Hugging Face model folder, or too little disk.
        UnsupportedArchitectureError: the builder cannot convert this architecture.
        InvalidOptionError: an unknown precision/method or an option out of range.
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
    source = inspect_source(spec.model_dir)
    supported = supported_architectures()
    if supported and source.architecture not in supported:
        raise UnsupportedArchitectureError(source.architecture, supported)
    spec.int4.validate()
    if precision is Precision.FP16 and spec.execution_provider == "cpu":
        raise InvalidOptionError(
            "precision", "fp16",
            "a GPU target: FP16 is for GPUs and runs slowly or not at all on the CPU provider; "
            "pass --execution-provider cuda to build for a GPU, or choose int8/int4 for CPU",
        )
    if precision is Precision.INT8 and method is not Method.BUILDER:
        raise InvalidOptionError(
            "method", str(method), "'builder' for int8 (Olive's ModelBuilder pass has no int8 in this version)"
        )
    weights = sum(p.stat().st_size for p in source.path.glob("*.safetensors")) or 1
    free = shutil.disk_usage(Path(spec.output_dir).resolve().parent if Path(spec.output_dir).parent.exists()
                             else Path.cwd()).free
    # A conversion writes up to ~2x the FP32 weights (intermediate FP32 model for INT8).
    if free < 2 * weights:
        raise ModelFolderError(
            spec.output_dir, f"only {free / 1e6:.0f} MB free, about {2 * weights / 1e6:.0f} MB needed",
            "Free some disk space or choose another --out.",
        )
    return source


def _versions() -> dict[str, str]:
    names = ["onnxruntime-genai", "onnxruntime", "olive-ai", "transformers", "torch", "foundry-local-sdk"]
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def dir_size_mb(path: Path, pattern: str = "**/*") -> float:
    """Total size in MB (10^6 bytes) of the files under ``path`` matching ``pattern`` (all by default)."""
    return sum(p.stat().st_size for p in Path(path).glob(pattern) if p.is_file()) / 1e6


def _copy_support_files(source: Path, target: Path) -> None:
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith("model.onnx"):
            shutil.copy2(item, target / item.name)


def _steps(spec: ConvertSpec) -> list[str]:
    steps = {Method.BUILDER: "build ONNX (model builder)", Method.OLIVE: "olive auto-opt",
             Method.OLIVE_CONFIG: "olive run --config"}
    names = ["validate", steps[Method(spec.method)]]
    if spec.precision is Precision.INT8:
        names.append("quantize weights to int8")
    return [*names, "write manifest and move into place"]


def convert(spec: ConvertSpec, *, progress: bool = True, dry_run: bool = False) -> ConvertResult:
    """Convert ``spec.model_dir`` to an ONNX Runtime GenAI model in ``spec.output_dir``.

    The model is built in a temporary folder beside the target and moved into place
    only when every step succeeded, so a failure or Ctrl-C leaves the target as it was.
    A ``manifest.json`` in the output records route, options, versions, wall time,
    peak RSS, size and the source's fingerprint.

    Args:
        spec: What to convert and how.
        progress: Show a progress bar over the steps.
        dry_run: With the ``olive-config`` method, write the Olive config to
            ``output_dir`` and stop.

    Raises:
        SlmopsError: a specific subclass for bad input (before any work) or a tool failure.

    Example:
        >>> convert(ConvertSpec(bundled_model(), Path("out/int4"))).size_mb
        194.5
    """
    from tqdm.auto import tqdm

    source = validate(spec)
    spec = ConvertSpec(Path(spec.model_dir), Path(spec.output_dir), Precision(spec.precision),
                       Method(spec.method), spec.int4, spec.execution_provider)
    target = spec.output_dir.resolve()
    bar = tqdm(total=len(_steps(spec)), desc=f"convert {spec.precision}", disable=not progress, unit="step")
    bar.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    if dry_run:
        if spec.method is not Method.OLIVE_CONFIG:
            raise InvalidOptionError("dry_run", True, "only with --method olive-config")
        target.mkdir(parents=True, exist_ok=True)
        config = build_olive_config(spec, target, target.parent / ".olive-cache")
        (target / OLIVE_CONFIG).write_text(json.dumps(config, indent=2))
        bar.close()
        return ConvertResult(target, {"dry_run": True, "config": str(target / OLIVE_CONFIG)})

    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        staging = scratch / "model"
        logs = scratch / "logs"
        runs: list[tools.ToolRun] = []
        bar.set_postfix_str(_steps(spec)[1])
        start = time.perf_counter()
        if spec.method is Method.BUILDER:
            first = scratch / "fp32" if spec.precision is Precision.INT8 else staging
            runs.append(tools.run_tool(builder_command(spec, first, scratch / "cache"),
                                       log_path=logs / "builder.log", name="onnxruntime_genai builder"))
        elif spec.method is Method.OLIVE:
            runs.append(tools.run_tool(olive_command(spec, staging), log_path=logs / "olive.log",
                                       cwd=scratch, name="olive auto-opt"))
        else:
            config = build_olive_config(spec, staging, scratch / "olive-cache")
            config_file = scratch / OLIVE_CONFIG
            config_file.write_text(json.dumps(config, indent=2))
            runs.append(tools.run_tool(tools.python_module("olive", "run", "--config", str(config_file)),
                                       log_path=logs / "olive.log", cwd=scratch, name="olive run"))
        bar.update()
        if spec.precision is Precision.INT8:
            bar.set_postfix_str("quantize int8")
            staging.mkdir()
            runs.append(tools.run_tool(
                tools.python_module("toolkit.quantize", str(first / "model.onnx"), str(staging / "model.onnx")),
                log_path=logs / "quantize.log", name="int8 quantizer"))
            _copy_support_files(first, staging)
            bar.update()
        wall = time.perf_counter() - start
        bar.set_postfix_str("finalize")
        if not (staging / "genai_config.json").is_file():
            raise ModelFolderError(staging, "the tool finished but wrote no genai_config.json",
                                   f"See the logs in {logs}.")
        if spec.method is Method.OLIVE_CONFIG:
            shutil.copy2(scratch / OLIVE_CONFIG, staging / OLIVE_CONFIG)
        source_mb = dir_size_mb(source.path, "*.safetensors")
        size_mb = dir_size_mb(staging)
        manifest = {
            "model": source.path.name,
            "source_path": str(source.path),
            "source_fingerprint": fingerprint(source.path),
            "architecture": source.architecture,
            "method": str(spec.method),
            "precision": str(spec.precision),
            "execution_provider": spec.execution_provider,
            "options": asdict(spec.int4) if spec.precision is Precision.INT4 else {},
            "commands": [list(run.command) for run in runs],
            "wall_s": round(wall, 3),
            "tool_wall_s": [round(run.wall_s, 3) for run in runs],
            "peak_rss_mb": round(max(run.peak_rss_mb for run in runs), 1),
            "size_mb": round(size_mb, 2),
            "source_size_mb": round(source_mb, 2),
            "size_ratio_vs_source": round(size_mb / source_mb, 4) if source_mb else None,
            "tutorial_size_ratio": TUTORIAL_SIZE_RATIO[spec.precision],
            "versions": _versions(),
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_into_place(staging, target)
        bar.update()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        bar.close()
    return ConvertResult(target, manifest)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` with ``staging``: the old one is only removed once the new one is in."""
    os.chmod(staging, 0o755)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        try:
            staging.rename(target)
        except BaseException:
            old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)


def read_manifest(model_dir: str | os.PathLike[str]) -> dict:
    """The ``manifest.json`` of a converted model, or ``{}`` when it has none."""
    file = Path(model_dir) / MANIFEST
    return json.loads(file.read_text()) if file.is_file() else {}


def convert_all(model_dir: str | os.PathLike[str], precisions: list[str], out_dir: str | os.PathLike[str], *,
                method: Method | str = Method.BUILDER, int4: Int4Options | None = None,
                progress: bool = True) -> list[dict]:
    """Convert one model at several precisions into ``out_dir/<precision>``; write ``convert.json``.

    Example:
        >>> [m["precision"] for m in convert_all(bundled_model(), ["fp32", "int4"], "outputs/run/models")]
        ['fp32', 'int4']
    """
    out = Path(out_dir)
    manifests = []
    for precision in precisions:
        result = convert(ConvertSpec(Path(model_dir), out / str(precision), Precision(precision), Method(method),
                                     int4 or Int4Options()), progress=progress)
        manifests.append({**result.manifest, "output_dir": str(result.output_dir)})
    (out / "convert.json").write_text(json.dumps(manifests, indent=2))
    return manifests
