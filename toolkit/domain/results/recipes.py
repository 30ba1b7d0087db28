"""The INT4 recipe comparison's result (``recipes.json``): each recipe built and measured against the FP32 build.

Version history of ``recipes.json``:

1. (a bare list, no ``schema_version``) agreement as ``top1``, KL as ``kl`` and ``kl_to_base``;
   still loaded under the current names.
2. ``{"schema_version": 2, "recipes": [RecipeResult, ...]}``: ``top1_agreement``,
   ``kl_divergence`` and ``kl_divergence_to_base``, the names every other result file uses.
3. ``refused``: a recipe whose build the parity gate refused stays in the comparison with the
   gate's figures, the reason, and no perplexity or decode speed (``None``); older files load
   with ``refused`` empty.
4. ``lora_in_graph``, ``bits_per_weight``, ``parity_top1_agreement`` and ``parity_kl_divergence``: a fine-tune's
   build whose LoRA stays a side branch in the graph is measured beside the merged recipes, shown, and never
   recommended or adopted; each build's bits per weight (counting the branch) and its own parity figures
   against the source model in transformers. Older files load with ``lora_in_graph`` false and the others None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from slmops.toolkit.core import artifacts, codec

#: The version :func:`write_recipes` writes.
SCHEMA_VERSION = 4

#: Version-1 field names and their names since version 2.
_RENAMED = {"top1": "top1_agreement", "kl": "kl_divergence", "kl_to_base": "kl_divergence_to_base"}


@dataclass(frozen=True)
class RecipeResult:
    """One INT4 recipe built and measured against the FP32 build.

    Attributes:
        recipe: Name in :data:`slmops.toolkit.domain.options.INT4_RECIPES`.
        note: What the recipe does.
        output_dir: Where it was built.
        size_mb: Size on disk, MB (10^6 bytes).
        size_ratio_vs_fp32: Size over the FP32 build's.
        top1_agreement: Greedy next-token agreement with FP32 on the bundled text (share, 0-1); for a
            refused recipe, the parity gate's (against the source model in transformers).
        kl_divergence: Mean KL divergence from FP32 (nats); for a refused recipe, the gate's.
        perplexity: Perplexity on the bundled text (FP32's is in ``reference_perplexity``); None when refused.
        reference_perplexity: The FP32 build's perplexity on the same text; None when refused.
        decode_tps: Quick greedy decode probe through ONNX Runtime GenAI (tokens/s); None when refused.
        kl_divergence_to_base: Mean KL divergence from the base model's FP32 build (nats), when one was given.
        moved_toward_base: The build is closer to the base than to the fine-tuned FP32 (KL to
            the base below KL to FP32): quantization rounded the fine-tune away.
        pass_rate: Share of domain cases passed, when measured (None otherwise).
        refused: Why the parity gate refused the recipe's build (nothing was kept, nothing else measured);
            empty when it was built.
        lora_in_graph: The fine-tune's LoRA stays a side branch in the graph (a recipe of
            :data:`~slmops.toolkit.domain.options.LORA_IN_GRAPH_RECIPES`): measured and shown beside the merged
            recipes, never recommended or adopted.
        bits_per_weight: The graph's files x 8 over the source's parameters (the branch counted); None when refused
            or not measured.
        parity_top1_agreement: The build's own parity check: top-1 agreement with the source model (for a
            fine-tune, the merged fine-tune) in transformers; None when not checked.
        parity_kl_divergence: The same check's mean KL divergence, nats; None when not checked.
    """

    recipe: str
    note: str
    output_dir: str
    size_mb: float
    size_ratio_vs_fp32: float
    top1_agreement: float
    kl_divergence: float
    perplexity: float | None
    reference_perplexity: float | None
    decode_tps: float | None
    kl_divergence_to_base: float | None = None
    moved_toward_base: bool = False
    pass_rate: float | None = None
    refused: str = ""
    lora_in_graph: bool = False
    bits_per_weight: float | None = None
    parity_top1_agreement: float | None = None
    parity_kl_divergence: float | None = None


@dataclass(frozen=True)
class RecipesFile:
    """``recipes.json``: every recipe the comparison built or the parity gate refused.

    Attributes:
        recipes: One per recipe, in the order compared.
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "recipes.json"

    recipes: tuple[RecipeResult, ...] = ()

    @classmethod
    def upgrade(cls, data: object, version: int) -> object:
        """Version 1 was a bare list with the old names; version 2 had no ``refused`` (read as empty), version 3 no
        ``lora_in_graph`` (false) nor bits per weight and parity figures (None)."""
        if isinstance(data, list):
            return {"recipes": [{_RENAMED.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row
                                for row in data]}
        return data


def write_recipes(path: str | os.PathLike[str], results: list[RecipeResult]) -> Path:
    """Write ``recipes.json``: the current schema version and every recipe."""
    return codec.write(path, RecipesFile(tuple(results)))


def read_recipes(path: str | os.PathLike[str]) -> list[RecipeResult]:
    """The recipes of a ``recipes.json`` of any known version (an empty list when there is none).

    Raises:
        ResultVersionError: a file written by a newer toolkit.
        RecordError: a recipe of the wrong shape.

    Example:
        >>> [r.recipe for r in read_recipes("outputs/demo/models/recipes/recipes.json")]
        ['builder-default', 'int8-head']
    """
    data = artifacts.read_json(Path(path), None)
    return list(codec.load(RecipesFile, data, kind=str(path)).recipes) if data is not None else []


@dataclass(frozen=True)
class RefusedFigures:
    """What the parity gate measured of a build it refused (its error's ``record``: the check and the size).

    Attributes:
        top1_agreement: Top-1 agreement with the source model (0-1).
        kl_divergence: Mean KL divergence from the source model, nats.
        size_mb: The refused build's size on disk, MB (None: not measured).
    """

    top1_agreement: float = 0.0
    kl_divergence: float = 0.0
    size_mb: float | None = None


@dataclass(frozen=True)
class Refusal:
    """A recipe build the parity gate refused, kept in the build cache so it is not built again to be refused.

    Attributes:
        reason: The gate's error, in words.
        record: What the gate measured.
    """

    KIND: ClassVar[str] = "refused.json"

    reason: str
    record: RefusedFigures
