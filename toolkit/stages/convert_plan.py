"""What a conversion is and what its route runs: the spec, the tools' commands and the Olive config (all pure).

:func:`needs_quantizer` and :func:`route_precision` say how a precision is reached on a route;
:func:`builder_command`, :func:`olive_command` and :func:`build_olive_config` are what
:mod:`slmops.toolkit.stages.convert` runs; :func:`quant_plan` is what the toolkit's quantizer is asked.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from slmops.toolkit.core import workers
from slmops.toolkit.domain import adapters
from slmops.toolkit.domain.options import (
    LORA_BRANCH_BITS,
    LORA_BRANCH_LAYOUT,
    LORA_ERROR_RANK,
    BranchLayout,
    Int4Algorithm,
    Int4Mix,
    Int4Options,
    Method,
    Precision,
)
from slmops.toolkit.domain.quant_plan import QuantPlan

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
        adapter_in_graph: With a LoRA adapter as ``model_dir`` (builder route, INT4 or INT8): build the base
            with the adapter as a side branch inside the one graph (``y = Wq x + B(A x)``, the LoRA
            matrices FP16 constants read through a Cast to float, which the quantizer leaves alone, then ``branch_bits``) instead of merging it into the quantized
            weights: one graph, as Foundry Local loads, that keeps what the fine-tune learned. Checked
            against the merged model in transformers like any other build.
        error_rank: With ``adapter_in_graph``: the rank ``r'`` added to each side branch for its quantized base's
            rounding error (:mod:`slmops.toolkit.weights.lora_branch`; 0: the fine-tune's LoRA alone).
        branch_bits: With ``adapter_in_graph``: how the side branch is stored, 16 (FP16 constants, float MatMuls)
            or 8 (8-bit ``MatMulNBits``).
        branch_layout: With ``adapter_in_graph``: how the side branch joins its base
            (:class:`~slmops.toolkit.domain.options.BranchLayout`; folded: ``B`` in the base's ``MatMulNBits``).
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
    adapter_in_graph: bool = False
    error_rank: int = LORA_ERROR_RANK
    branch_bits: int = LORA_BRANCH_BITS
    branch_layout: BranchLayout = LORA_BRANCH_LAYOUT

    @property
    def keeps_lora(self) -> bool:
        """Whether the build keeps the LoRA apart from the base's weights (as an adapter file, or in the graph)."""
        return self.keep_adapter or self.adapter_in_graph


#: Where a build whose LoRA was kept apart holds its adapter files (``<name>.onnx_adapter``).
ADAPTERS_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"


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


def supported_activations() -> list[str]:
    """The ``hidden_act`` values the installed ONNX Runtime GenAI builder builds an MLP with (read from its source)."""
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "builders" / "base.py"
    if not source.is_file():
        return []
    sets = re.findall(r"self\.activation in \{([^}]*)\}", source.read_text())
    return sorted({name for found in sets for name in re.findall(r'"(\w+)"', found)})


def needs_quantizer(spec: ConvertSpec) -> bool:
    """Whether ``spec`` is built as FP32 by the route and then quantized by :mod:`slmops.toolkit.weights.quantize`.

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
    """The :class:`~slmops.toolkit.domain.quant_plan.QuantPlan` for ``spec`` (when :func:`needs_quantizer`).

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
