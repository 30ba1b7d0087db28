"""The fine-tuning stage's record: ``finetune.json`` in the adapter folder (what was trained, on what, and how).

:func:`read_finetune` is its one reader: the fine-tuning stage reuses an adapter whose record has
the same key, and registration probes tool calling with a case of the dataset it was trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import InputError

#: The record's file name, in the adapter folder.
FINETUNE_RECORD = "finetune.json"


@dataclass(frozen=True)
class FinetuneSettings:
    """The training settings.

    Attributes:
        rank: LoRA rank.
        steps: Optimizer steps.
        batch: Examples per step.
        learning_rate: The learning rate.
        seed: The random seed.
    """

    rank: int = 0
    steps: int = 0
    batch: int = 0
    learning_rate: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class FinetuneRecord:
    """One fine-tune (``finetune.json``).

    Attributes:
        key: What decides reuse: the base, the examples and the settings (a hash).
        base: The base model folder.
        data: The dataset (a JSONL path, or the bundled dataset's name).
        examples: Examples trained on.
        tool_examples_skipped: Tool-call examples left out (the base has no tool-call tokens).
        losses: The training loss at each step.
        wall_s: Seconds training took.
        settings: The training settings.
    """

    KIND: ClassVar[str] = FINETUNE_RECORD

    key: str = ""
    base: str = ""
    data: str = ""
    examples: int = 0
    tool_examples_skipped: int = 0
    losses: tuple[float, ...] = ()
    wall_s: float = 0.0
    settings: FinetuneSettings = field(default_factory=FinetuneSettings)


def read_finetune(folder: str | os.PathLike[str]) -> FinetuneRecord | None:
    """The record of the fine-tune in ``folder`` (None: none, or not one this toolkit reads)."""
    file = Path(folder) / FINETUNE_RECORD
    try:
        return codec.read(FinetuneRecord, file) if file.is_file() else None
    except InputError:
        return None


def write_finetune(folder: str | os.PathLike[str], record: FinetuneRecord) -> Path:
    """Write ``record`` into ``folder`` (atomically)."""
    return codec.write(Path(folder) / FINETUNE_RECORD, record)
