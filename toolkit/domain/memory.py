"""How much memory a conversion will need at its peak, predicted from the checkpoint before it starts.

A conversion is a few child processes run one after another (merge an adapter, export
with the builder or Olive, quantize), so its peak is the largest of theirs. Each is
predicted from three numbers the safetensors headers give without reading a weight:
the checkpoint's size on disk, the parameter count, and the largest single tensor
(the embedding table or LM head, which every step handles whole at least once).

The coefficients come from measurements of random-initialized models of real shapes
(``benchmarks/scale.py``, 0.5B to 3.8B parameters, bf16 checkpoints), rounded up so that
every measured peak fell under its prediction:

* the builder's export through :mod:`slmops.toolkit.runtimes.genai_builder` holds the checkpoint
  (memory-mapped, its pages resident once read) plus one tensor cast in flight; models
  whose fused weights the builder splits (Phi-3's ``qkv_proj``, ``gate_up_proj``) hold up
  to a fifth more: 9.8 GB for Phi-3-mini's 7.6 GB checkpoint;
* the builder's own in-memory INT4 (what Olive runs) holds the FP32 model, its proto and
  the quantized copy: about 3.2x the FP32 size (6.6 GiB measured for Qwen2.5-0.5B, 13.8
  GiB for Llama-3.2-1B);
* our tensor-by-tensor quantizer holds the largest FP32 tensor and slices of it, and its
  allocator keeps a little of every tensor it has seen (about a tenth of the FP32 model);
* peft's merge loads the base in FP32 and keeps the merged copy while saving;
* the parity check runs one child at a time: the source in transformers as stored (computed in
  FP32 a module at a time, so one tensor is upcast at once; bf16 when even that would not fit),
  then each build: the FP32 model a quantizer started from in ONNX Runtime with its weights as
  written, a delivered build in ONNX Runtime GenAI (an FP32 one 1.6 times over: its weights prepacked).
"""

from __future__ import annotations

from dataclasses import dataclass

from slmops.toolkit.domain.options import Method, Precision

_MIB = 2**20
#: Interpreter, torch, transformers and the ONNX libraries in a builder or Olive child.
EXPORT_BASE_MIB = 600.0
#: Interpreter and ONNX Runtime (GenAI) in a parity check's child that runs a build.
RUNTIME_BASE_MIB = 150.0
#: Interpreter, ONNX and ONNX Runtime's quantizer in the quantizer child.
QUANTIZE_BASE_MIB = 350.0
#: Slices of one weight in flight in the quantizer (its ``CHUNK_BYTES`` with ORT's copies).
QUANTIZE_SLICES_MIB = 450.0
#: The checkpoint's share of the export's peak (1.0 plus what split fused weights add).
EXPORT_CHECKPOINT_FACTOR = 1.25
#: The quantizer's allocator keeps this share of the FP32 model it has read.
QUANTIZE_RESIDUE = 0.1
#: Head room on every prediction: allocator slack and the page cache's share of the RSS.
MARGIN = 1.1


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak resident memory of each step of a conversion, in MiB.

    Attributes:
        steps: ``(step, MiB)`` in the order they run.
        basis: What the prediction was computed from, for the manifest and messages.
    """

    steps: tuple[tuple[str, float], ...]
    basis: str

    @property
    def peak_mib(self) -> float:
        """The largest step's prediction: the conversion's peak."""
        return max(mb for _, mb in self.steps)

    @property
    def peak_step(self) -> str:
        """The step predicted to peak."""
        return max(self.steps, key=lambda step: step[1])[0]

    def as_dict(self) -> dict:
        """The estimate as the manifest records it."""
        return {"predicted_peak_mib": round(self.peak_mib, 1), "peak_step": self.peak_step,
                "steps": {name: round(mb, 1) for name, mb in self.steps}, "basis": self.basis}


def estimate(*, parameters: int, largest_tensor: int, checkpoint_bytes: int, method: Method,
             route_precision: Precision, quantized: bool, adapter: bool = False,
             parity_bytes_per_weight: int = 4, parity_logits: int = 0) -> MemoryEstimate:
    """Predict the peak memory of a conversion.

    Args:
        parameters: Weights in the checkpoint.
        largest_tensor: Weights in its largest tensor.
        checkpoint_bytes: Size of its weight files on disk.
        method: The route.
        route_precision: What the route itself builds (FP32 when our quantizer follows).
        quantized: Whether our quantizer runs after the route.
        adapter: Whether a LoRA adapter is merged into the checkpoint first (the merged
            folder is FP32, so the export then reads an FP32 checkpoint).
        parity_bytes_per_weight: Bytes per weight the parity check's reference computes in
            (4: FP32; 2: bf16 when FP32 would not fit); 0: no check.
        parity_logits: Logits of the parity check's sequences (positions x vocabulary), which
            each of its children holds once beside its model.

    Example:
        >>> e = estimate(parameters=494_000_000, largest_tensor=136_000_000, checkpoint_bytes=988_000_000,
        ...              method=Method.BUILDER, route_precision=Precision.FP32, quantized=True)
        >>> e.peak_step
        'parity check: the reference (transformers)'
    """
    fp32_mib = parameters * 4 / _MIB
    largest_mib = largest_tensor * 4 / _MIB
    checkpoint_mib = checkpoint_bytes / _MIB
    steps: list[tuple[str, float]] = []
    if adapter:
        steps.append(("merge the adapter (peft, fp32)", EXPORT_BASE_MIB + 2 * fp32_mib))
        checkpoint_mib = fp32_mib
    if method is Method.BUILDER:
        steps.append((f"export (model builder, {route_precision})",
                      EXPORT_BASE_MIB + EXPORT_CHECKPOINT_FACTOR * checkpoint_mib + largest_mib))
    elif route_precision is Precision.INT4:
        steps.append((f"export ({method}: the builder's in-memory int4)", EXPORT_BASE_MIB + 3.2 * fp32_mib))
    else:  # Olive's builder keeps each FP32 cast it writes
        steps.append((f"export ({method}, {route_precision})", EXPORT_BASE_MIB + checkpoint_mib + fp32_mib))
    if quantized:
        steps.append(("quantize (tensor by tensor)",
                      QUANTIZE_BASE_MIB + 2 * largest_mib + QUANTIZE_SLICES_MIB + QUANTIZE_RESIDUE * fp32_mib))
    if parity_bytes_per_weight:  # one child at a time: transformers', then each build's
        logits_mib = 4 * parity_logits / _MIB
        upcast_mib = largest_mib if parity_bytes_per_weight == 4 else 0.0
        steps.append(("parity check: the reference (transformers)", EXPORT_BASE_MIB + logits_mib + upcast_mib
                      + min(checkpoint_mib, parity_bytes_per_weight * parameters / _MIB)))
        if quantized:
            build = ("parity check: the FP32 model (onnxruntime)", fp32_mib)
        elif route_precision is Precision.FP32:
            build = ("parity check: the build (onnxruntime-genai)", 1.6 * fp32_mib)  # prepacked: most of a second copy
        else:
            build = ("parity check: the build (onnxruntime-genai)", parameters / _MIB)
        steps.append((build[0], RUNTIME_BASE_MIB + build[1] + logits_mib))
    basis = (f"{parameters / 1e9:.2f}B parameters, largest tensor {largest_tensor / 1e6:.0f}M, "
             f"checkpoint {checkpoint_bytes / 1e9:.2f} GB{', LoRA merge first' if adapter else ''}")
    return MemoryEstimate(tuple((name, mb * MARGIN) for name, mb in steps), basis)


def shortfall_options(estimate_: MemoryEstimate, available_mib: float, method: Method) -> list[str]:
    """What a user can do when ``estimate_`` does not fit in ``available_mib``."""
    options = []
    if method is not Method.BUILDER:
        options.append("use --method builder, which exports lean and quantizes tensor by tensor")
    options += [
        f"free about {(estimate_.peak_mib - available_mib) / 1024:.1f} GiB (close other programs, stop other runs)",
        "convert on a machine with more memory and copy the model folder here (the result is portable)",
        "pass --skip-memory-check to try anyway (the system may kill the conversion)",
    ]
    return options
