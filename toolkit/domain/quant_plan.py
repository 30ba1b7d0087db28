"""What the weight quantizer is asked: the plan, the mixed-bit rules, and the children's payloads.

Pure: the quantizer that follows a plan is :mod:`slmops.toolkit.weights.quantize`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class QuantPlan:
    """What to quantize and how.

    Attributes:
        bits: Bits of the transformer body's MatMul weights (4 or 8).
        algorithm: ``default`` (min-max), ``rtn``, ``k_quant``, ``hqq``, or ``gptq`` (calibrated on
            ``calibration``, see :mod:`slmops.toolkit.weights.gptq`; symmetric, the default's grid and kernels).
        block_size: Weights per quantization block.
        symmetric: Symmetric quantization (no zero points); HQQ is always asymmetric.
        accuracy_level: MatMulNBits compute type (4 int8, 3 bf16, 2 fp16, 1 fp32, 0 unset).
        lm_head_bits: 4, 8, or 32 to keep the LM head in FP32.
        embedding_bits: 4, 8, or 32 to keep the embedding table in FP32.
        lm_head_with_body: Quantize the LM head with the body's algorithm and settings (the
            builder's own INT4) instead of our symmetric table layout.
        mix: A named rule in :data:`MIXES` choosing MatMuls (or the value part of a fused
            ``qkv_proj``) that get ``mix_bits`` instead of ``bits``; empty for a uniform body.
        mix_bits: Bits of the MatMuls the mix chooses (8).
        calibration: GPTQ's calibration dataset (a fine-tuning JSONL); empty for the bundled Veloria set.
        rotate: Rotate the residual stream (and values per head) before quantizing, which spreads
            outlier channels over all of them (see :mod:`slmops.toolkit.weights.rotate`).
    """

    bits: int = 4
    algorithm: str = "default"
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    lm_head_bits: int = 4
    embedding_bits: int = 32
    lm_head_with_body: bool = False
    mix: str = ""
    mix_bits: int = 8
    calibration: str = ""
    rotate: bool = False


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third one between.

    Example:
        >>> [i for i in range(30) if use_more_bits(i, 30)]
        [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    """
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


#: Mixed-precision rules: name -> (which projections, which layers) that get ``mix_bits``.
#: ``v`` is the value projection (split out of a fused ``qkv_proj``), ``down`` the MLP's.
#: Measured on the demo's fine-tune (KL against FP32, see docs/benchmarks.md, "INT4 recipes"): the value
#: projections and a few MLP down projections (layer 11's alone carries a fifth of the
#: 4-bit body's KL) are where 4 bits lose the fine-tune.
MIXES: dict[str, dict[str, str]] = {
    "q4_k_m": {"v": "more-bits", "down": "more-bits"},  # llama.cpp's Q4_K_M choice of tensors
    "v-all-down-more-bits": {"v": "all", "down": "more-bits"},
    "v-down-all": {"v": "all", "down": "all"},  # at block 64: 6.35 bits/weight, KL 0.176 (benchmarks/int4_gptq.py)
}


#: A MatMul's layer in the model builder's node names (``/model/layers.11/mlp/down_proj/MatMul``).
LAYER_NAME = re.compile(r"/model/layers\.(\d+)/")


def _projection(node_name: str) -> str:
    for kind, names in (("v", ("/v_proj/", "/qkv_proj/")), ("down", ("/down_proj/",))):
        if any(name in node_name for name in names):
            return kind
    return ""


def mixed_bits(node_name: str, plan: QuantPlan, layers: int) -> int:
    """Bits of MatMul ``node_name`` under ``plan``'s mix (for a fused ``qkv_proj``: of its value part).

    Example:
        >>> mixed_bits("/model/layers.11/mlp/down_proj/MatMul", QuantPlan(mix="q4_k_m"), 30)
        8
    """
    rule = MIXES.get(plan.mix, {}).get(_projection(node_name))
    found = LAYER_NAME.search(node_name)
    if rule is None or found is None:
        return plan.bits
    chosen = rule == "all" or (rule == "more-bits" and use_more_bits(int(found.group(1)), layers))
    return plan.mix_bits if chosen else plan.bits


def plan_with_bits(plan: QuantPlan, bits: int) -> QuantPlan:
    """``plan`` for one MatMul at ``bits`` (RTN and k-quant are 4-bit only: 8 bits go through the default; GPTQ does both)."""
    if bits == plan.bits:
        return plan
    return replace(plan, bits=bits, algorithm="default" if plan.algorithm in {"rtn", "k_quant"} else plan.algorithm)


@dataclass(frozen=True)
class QuantizeJob:
    """What the quantizer's child is asked (the ``quantize`` task's payload).

    Attributes:
        source: The FP32 ``model.onnx`` to read.
        target: The ``model.onnx`` to write (its weights beside it).
        plan: What to quantize and how.
    """

    source: str
    target: str
    plan: QuantPlan


@dataclass(frozen=True)
class LoraJob:
    """What the keep-apart child is asked (the ``keep-lora-apart`` task's payload).

    Attributes:
        source: The model builder's ``model.onnx`` built with an adapter (LoRA matrices as initializers).
        target: The ``model.onnx`` to write: the same graph with each LoRA matrix a graph input.
        adapter_file: The ``.onnx_adapter`` file to write with the matrices.
    """

    source: str
    target: str
    adapter_file: str


@dataclass(frozen=True)
class LoraKept:
    """What the keep-apart child made (the ``keep-lora-apart`` task's result).

    Attributes:
        lora_inputs: Each LoRA matrix moved out of the graph: its graph input name to its shape.
    """

    lora_inputs: dict[str, list[int]]


@dataclass(frozen=True)
class LoraBranched:
    """What the side-branch child made (the ``lora-side-branch`` task's result), kept in the build's manifest.

    Attributes:
        branches: LoRA side branches in the graph.
        grown: Those that grew by the base's rounding error's rank (their base is a ``MatMulNBits`` under 8 bits).
        error_rank: The rank each grown branch gained for the base's rounding error (``--error-rank``).
        branch_bits: How the branch's ``A`` (and, added, its ``B``) is stored: 16 (FP16) or 8 (``MatMulNBits``).
        layout: How the branch joins its base (a :class:`~slmops.toolkit.domain.options.BranchLayout` value).
        folded: Those whose ``B`` was folded into the base's ``MatMulNBits``.
        merged: Those merged into their 8-bit base (``folded-merge8``; the rest are added).
    """

    branches: int
    grown: int
    error_rank: int = 0
    branch_bits: int = 16
    layout: str = "add"
    folded: int = 0
    merged: int = 0


@dataclass(frozen=True)
class LoraBranchJob:
    """What the side-branch child is asked (the ``lora-side-branch`` task's payload).

    Attributes:
        source: The quantized ``model.onnx`` whose LoRA is an FP16 side branch in the graph.
        fp32: The ``model.onnx`` it was quantized from (the base's FP32 weights under the same names).
        target: The ``model.onnx`` to write.
        error_rank: Rank added to each branch for the base's rounding error (0: none).
        bits: The branch's storage: 16 (FP16 constants, float MatMuls) or 8 (8-bit ``MatMulNBits``).
        layout: How the branch joins its base (a :class:`~slmops.toolkit.domain.options.BranchLayout` value).
    """

    source: str
    target: str
    fp32: str
    error_rank: int
    bits: int = 16
    layout: str = "add"
