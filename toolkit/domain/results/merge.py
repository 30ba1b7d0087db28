"""A LoRA adapter's merge record: ``merge.json`` in the merged folder, and the manifest's ``adapter`` entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class TokenizerOrigin:
    """Where a merged model's tokenizer, chat template and generation settings came from (``merge.json``'s ``tokenizer``).

    Attributes:
        tokenizer_from: ``adapter`` or ``base``.
        chat_template_from: ``adapter`` or ``base``.
        generation_config_from: ``adapter`` or ``base``.
        files_from_adapter: The adapter folder's own files that were used.
        eos_token_ids_added: EOS ids added to the merged ``generation_config.json``.
        vocab_size: The merged model's vocabulary (embedding rows).
    """

    tokenizer_from: str
    chat_template_from: str
    generation_config_from: str
    files_from_adapter: tuple[str, ...]
    eos_token_ids_added: tuple[int, ...]
    vocab_size: int

@dataclass(frozen=True)
class VocabSizes:
    """The vocabularies of an adapter's base and of the merged model (embedding rows; 0 when unknown).

    Attributes:
        base: The base's.
        merged: The merged model's.
    """

    base: int = 0
    merged: int = 0

@dataclass(frozen=True)
class MergeCheck:
    """The merged model against the unmerged adapter on the reference text (``merge.json``'s ``merge_check``).

    Attributes:
        max_abs_diff_vs_unmerged: Largest absolute logit difference.
        logit_range: The unmerged model's largest minus smallest logit.
        allowed: The largest difference allowed.
    """

    max_abs_diff_vs_unmerged: float
    logit_range: float
    allowed: float

@dataclass(frozen=True)
class MergeRecord:
    """A LoRA adapter and its merge: ``merge.json`` in the merged folder, and the manifest's ``adapter`` entry.

    Attributes:
        path: The adapter folder.
        fingerprint: SHA-256 prefix of its files.
        base: The base model folder.
        rank: LoRA rank ``r``.
        alpha: LoRA alpha.
        rank_pattern: Ranks of the modules (by peft's name pattern) whose rank is not ``rank``.
        alpha_pattern: Alphas of the modules whose alpha is not ``alpha``.
        use_rslora: Rank-stabilized LoRA.
        target_modules: The base's modules it adapts.
        modules_to_save: The base's modules it replaces whole.
        vocab_size: The base's and the merged model's vocabularies.
        files_from_adapter: The adapter folder's own files, which win over the base's.
        merge_route: How it was merged (:data:`slmops.toolkit.domain.adapters.MERGE_ROUTE`).
        merge_check: The merge against the unmerged adapter (None: not merged here).
        tokenizer: Where the merged model's tokenizer, template and generation settings came from.
        kept_apart: The build keeps the adapter apart from its base's weights (the manifest's entry only): in
            adapter files (the manifest's ``adapter_files``), or with none as a side branch in its graph.
    """

    KIND: ClassVar[str] = "merge.json"

    path: str = ""
    fingerprint: str = ""
    base: str = ""
    rank: int = 0
    alpha: float = 0.0
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    target_modules: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()
    vocab_size: VocabSizes = field(default_factory=VocabSizes)
    files_from_adapter: tuple[str, ...] = ()
    merge_route: str = ""
    merge_check: MergeCheck | None = None
    tokenizer: TokenizerOrigin | None = None
    kept_apart: bool = False
