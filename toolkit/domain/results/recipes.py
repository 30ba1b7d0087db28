"""The INT4 recipe comparison's result (``recipes.json``): each recipe built and measured against the FP32 build.

Version history of ``recipes.json``:

1. (a bare list, no ``schema_version``) agreement as ``top1``, KL as ``kl`` and ``kl_to_base``;
   still loaded under the current names.
2. ``{"schema_version": 2, "recipes": [RecipeResult, ...]}``: ``top1_agreement``,
   ``kl_divergence`` and ``kl_divergence_to_base``, the names every other result file uses.
3. ``refused``: a recipe whose build the parity gate refused stays in the comparison with the
   gate's figures, the reason, and no perplexity or decode speed (``None``); older files load
   with ``refused`` empty.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.domain.results import schema_version

#: The version :func:`recipes_file` writes.
SCHEMA_VERSION = 3

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

    def to_json(self) -> dict:
        """The recipe as ``recipes.json`` holds it."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RecipeResult:
        """A recipe of ``recipes.json`` (version-1 names renamed; unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{_RENAMED.get(k, k): v for k, v in data.items() if _RENAMED.get(k, k) in known})


def recipes_file(results: list[RecipeResult]) -> dict:
    """What ``recipes.json`` holds: the current schema version and every recipe."""
    return {"schema_version": SCHEMA_VERSION, "recipes": [r.to_json() for r in results]}


def read_recipes(path: str | os.PathLike[str]) -> list[RecipeResult]:
    """The recipes of a ``recipes.json`` of any known version (an empty list when there is none).

    Raises:
        ResultVersionError: a file written by a newer toolkit.

    Example:
        >>> [r.recipe for r in read_recipes("outputs/demo/models/recipes/recipes.json")]
        ['builder-default', 'int8-head']
    """
    data = artifacts.read_json(Path(path), None)
    if isinstance(data, dict):
        schema_version(data, Path(path).name, SCHEMA_VERSION)
        data = data.get("recipes")
    return [RecipeResult.from_json(row) for row in data if isinstance(row, dict)] if isinstance(data, list) else []
