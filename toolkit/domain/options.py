"""The choices a conversion is made of: precisions, routes, INT4 options and named recipes.

``StrEnum``s serve CLI choices, validation and widgets alike; :class:`Int4Options` is a
frozen dataclass whose defaults are the model builder's own INT4.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from slmops.toolkit.core.errors import InvalidOptionError


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

BLOCK_SIZES = (16, 32, 64, 128, 256)
#: The tutorial's ``ModelConfig`` repetition penalty for a registration (1 means none).
REPETITION_PENALTY = 1.1
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class Int4Algorithm(StrEnum):
    """How INT4 weights are chosen.

    ``default`` is the builder's (min-max, blockwise); ``rtn`` round-to-nearest; ``k_quant``
    llama.cpp-style k-quants; ``hqq`` half-quadratic quantization (asymmetric with float
    zero points: closest to the weights, but ONNX Runtime's CPU kernels run float zero
    points on a slow path); ``gptq`` GPTQ (Frantar et al. 2022) calibrated on the fine-tune's
    dataset, on the default's symmetric grid, so it runs on the same kernels at the same
    size (see :mod:`slmops.toolkit.weights.gptq`).
    """

    DEFAULT = "default"
    RTN = "rtn"
    K_QUANT = "k_quant"
    HQQ = "hqq"
    GPTQ = "gptq"


class TablePrecision(StrEnum):
    """Storage of the embedding table or the LM head."""

    FP32 = "fp32"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        """Bits per weight (32 for FP32)."""
        return {"fp32": 32, "int8": 8, "int4": 4}[self.value]


class Int4Mix(StrEnum):
    """Which MatMuls an INT4 body keeps at 8 bits (see :data:`slmops.toolkit.domain.quant_plan.MIXES`).

    ``none`` is a uniform 4-bit body; ``q4_k_m`` is llama.cpp's Q4_K_M choice (value and MLP
    down projections of the ``use_more_bits`` layers: first and last eighth, every third
    between); ``v-all-down-more-bits`` keeps every layer's value projection (split out of a
    fused ``qkv_proj``) and those layers' down projections; ``v-down-all`` every layer's value
    and down projections.
    """

    NONE = "none"
    Q4_K_M = "q4_k_m"
    V_ALL_DOWN_MORE_BITS = "v-all-down-more-bits"
    V_DOWN_ALL = "v-down-all"


@dataclass(frozen=True)
class Int4Options:
    """INT4 quantization options; the defaults are the model builder's own INT4.

    Attributes:
        block_size: Weights per quantization block (16, 32, 64, 128 or 256).
        symmetric: Symmetric int4 (True) or asymmetric uint4 with zero points (HQQ is always asymmetric).
        accuracy_level: Compute type of the int4 MatMul: 4 int8, 3 bf16, 2 fp16, 1 fp32, 0 unset.
        algorithm: How the int4 weights are chosen (see :class:`Int4Algorithm`).
        lm_head: Precision of the LM head (the vocabulary projection).
        embeddings: Precision of the embedding table. When the model ties it to the LM head
            and both have the same quantized precision, one table serves both.
        mix: MatMuls of the body kept at 8 bits (see :class:`Int4Mix`).
        rotate: Rotate the residual stream and the values per head before quantizing (QuaRot-style,
            see :mod:`slmops.toolkit.weights.rotate`): the FP32 function is unchanged and outlier
            channels are spread. Measured on the demo's fine-tune it helps GPTQ (KL against FP32
            0.136 to 0.088 on ``v-down-all`` at block 64, calibrated on generic prose) and hurts
            round-to-nearest (``int8-head``: 0.333 to 0.742), whose weights, de-quantized from a
            GGUF, fill their blocks evenly until rotated.
        calibration: GPTQ's calibration data: a fine-tuning JSONL or a plain ``.txt`` file; empty for
            the bundled fine-tuning set. Generic prose calibrates better than a narrow chat set.
    """

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    algorithm: Int4Algorithm = Int4Algorithm.DEFAULT
    lm_head: TablePrecision = TablePrecision.INT4
    embeddings: TablePrecision = TablePrecision.FP32
    mix: Int4Mix = Int4Mix.NONE
    rotate: bool = False
    calibration: str = ""

    def __post_init__(self) -> None:
        for name, kind in (("algorithm", Int4Algorithm), ("lm_head", TablePrecision), ("embeddings", TablePrecision),
                           ("mix", Int4Mix)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, kind(value))
            except ValueError as exc:
                raise InvalidOptionError(name, value, f"one of {[k.value for k in kind]}") from exc

    def validate(self) -> None:
        """Raise :class:`InvalidOptionError` for an option out of range."""
        if self.block_size not in BLOCK_SIZES:
            raise InvalidOptionError("block_size", self.block_size, f"one of {BLOCK_SIZES}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise InvalidOptionError("accuracy_level", self.accuracy_level, f"one of {ACCURACY_LEVELS}")
        if self.algorithm is Int4Algorithm.GPTQ and not self.symmetric:
            raise InvalidOptionError("symmetric", self.symmetric, "symmetric (True) with the gptq algorithm")
        if self.calibration and self.algorithm is not Int4Algorithm.GPTQ:
            raise InvalidOptionError("calibration", self.calibration, "a file only with the gptq algorithm")
        if self.calibration and not Path(self.calibration).is_file():
            raise InvalidOptionError("calibration", self.calibration, "an existing .jsonl or .txt file")

    @property
    def builder_native(self) -> bool:
        """The model builder can make this INT4 itself (otherwise: FP32 build, then our quantizer).

        The 0.14 builder's ``k_quant`` always makes the LM head 8-bit, and its shared
        quantized tables break for some block sizes, so only ``default``/``rtn`` with an
        int4 LM head and an FP32 table go through it.
        """
        return (self.algorithm in {Int4Algorithm.DEFAULT, Int4Algorithm.RTN} and self.mix is Int4Mix.NONE
                and not self.rotate
                and self.lm_head is TablePrecision.INT4 and self.embeddings is TablePrecision.FP32)


#: Named INT4 recipes that notebook 01 compares; ``builder-default`` is the tutorial's.
INT4_RECIPES: dict[str, Int4Options] = {
    "builder-default": Int4Options(),
    "compact": Int4Options(algorithm=Int4Algorithm.RTN, embeddings=TablePrecision.INT4),
    "int8-head": Int4Options(lm_head=TablePrecision.INT8, embeddings=TablePrecision.INT8),
    "hqq": Int4Options(algorithm=Int4Algorithm.HQQ, lm_head=TablePrecision.INT8, embeddings=TablePrecision.INT8),
    # Zero points per block: the Gemma 3 fine-tune (de-quantized from a Q4_K_M GGUF, whose blocks carry a
    # minimum) goes from KL 1.41 to 0.435 against FP32; SmolLM2's from 0.143 to 0.136, at the same decode speed.
    "mixed": Int4Options(symmetric=False, lm_head=TablePrecision.INT8, embeddings=TablePrecision.INT8,
                         mix=Int4Mix.V_ALL_DOWN_MORE_BITS),
}

#: Recipes of a fine-tune (a LoRA adapter as the model) whose LoRA stays a side branch in the one graph
#: (``slmops convert --adapter-in-graph``), each with the named recipe its base's weights follow, and its note.
#: The recipe comparison measures them beside the merged recipes when the model is an adapter.
LORA_IN_GRAPH_RECIPES: dict[str, tuple[str, str]] = {
    "mixed-lora": ("mixed", ("the `mixed` recipe's base with the LoRA as a side branch in the graph, not merged "
                            "into the int4 weights (fine-tunes only)")),
}

#: The rank each LoRA side branch in the graph gains for its quantized base's rounding error (``--error-rank``),
#: and how the branch is stored (``--branch-bits``: 16, FP16 constants; 8, 8-bit MatMulNBits).
LORA_ERROR_RANK = 16
LORA_BRANCH_BITS = 8
BRANCH_BITS = (16, 8)


class BranchLayout(StrEnum):
    """How a LoRA side branch in the graph joins its base's output (``--branch-layout``).

    ``add``: ``A`` and ``B`` each their own MatMul, summed with the base's by an Add. ``folded``: ``B``'s rows
    appended to the base's ``MatMulNBits`` weight (their own blocks and scales, at the base's bits) and the base
    reading ``[x, x A]``, so only ``A`` and a Concat remain beside the base. ``folded-merge8``: folded, except over
    an 8-bit base, where the LoRA is merged into the base's weights before they are rounded (as a merged build
    does: 8 bits hold it), so no branch is left there.
    """

    ADD = "add"
    FOLDED = "folded"
    FOLDED_MERGE8 = "folded-merge8"


LORA_BRANCH_LAYOUT = BranchLayout.FOLDED_MERGE8

#: The INT4 recipe a run uses unless told otherwise: the tutorial's.
DEFAULT_INT4_RECIPE = "builder-default"

#: One line per recipe, for pickers and ``--help``.
RECIPE_NOTES: dict[str, str] = {
    "builder-default": "the builder's INT4: MatMuls int4, embedding table FP32 (the tutorial's)",
    "compact": "everything int4 (RTN), one int4 table for embeddings and LM head: smallest",
    "int8-head": "int4 body, one int8 table for embeddings and LM head",
    "hqq": "HQQ int4 body (float zero points: accurate, slow on CPU), int8 table",
    "mixed": "asymmetric int4 body with 8-bit value projections and llama.cpp's use_more_bits down projections, "
             "int8 table",
}


def recipe_options(recipe: str, *, block_size: int = 0) -> Int4Options:
    """The INT4 options of a named recipe (see :data:`INT4_RECIPES`), with another block size when given.

    Example:
        >>> recipe_options("compact", block_size=64).block_size
        64
    """
    if recipe not in INT4_RECIPES:
        raise InvalidOptionError("int4_recipe", recipe, f"one of {list(INT4_RECIPES)}")
    options = INT4_RECIPES[recipe]
    return replace(options, block_size=block_size) if block_size else options


def recipe_name(options: Int4Options) -> str | None:
    """The :data:`INT4_RECIPES` name of ``options``, or None when they were edited."""
    return next((name for name, recipe in INT4_RECIPES.items() if recipe == options), None)
