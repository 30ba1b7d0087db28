"""What the parity check's children are asked and answer (payloads through :mod:`slmops.toolkit.core.codec`).

The parent (:mod:`slmops.toolkit.runtimes.reference`) sends a :class:`ReferenceTask` to the child
that runs transformers and one :class:`CandidateJob` per build; each child answers with a
:class:`ReferenceWritten` or a :class:`CandidateFigures`. :class:`ParityResult` is what the check
hands back to the conversion stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slmops.toolkit.domain import parity


@dataclass(frozen=True)
class ParityJob:
    """What the parity check compares.

    Attributes:
        source: The Hugging Face folder the builds came from.
        text: The text whose tokens both sides read.
        dtype: What transformers loads the source in (``float32`` or ``bfloat16``).
        fingerprint: The source's content fingerprint ("" keeps no reference on disk).
        candidates: Label to ONNX model folder.
        adapters: Label to the ``.onnx_adapter`` file activated for that candidate (a LoRA kept apart).
    """

    source: str
    text: str
    dtype: str
    fingerprint: str
    candidates: dict[str, str]
    adapters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReferenceTask:
    """The ``reference`` task's payload: compute the reference of ``job`` and write it to ``out``.

    Attributes:
        job: The check.
        out: The reference file to write (``.npz``: each sequence's ids and transformers' logits).
    """

    job: ParityJob
    out: str


@dataclass(frozen=True)
class ReferenceWritten:
    """The ``reference`` task's result.

    Attributes:
        bytes: The size of the logits written.
    """

    bytes: int


@dataclass(frozen=True)
class ReferenceMeta:
    """What a reference file says besides its arrays (its ``meta`` entry).

    Attributes:
        reference: What the reference was (``transformers 4.x (float32)``).
        what: What each sequence is, in the order of the file's ``ids0``, ``ids1``... arrays.
    """

    reference: str
    what: tuple[str, ...]


@dataclass(frozen=True)
class CandidateJob:
    """One build to compare with the reference on disk (the ``candidate`` task's payload).

    Attributes:
        label: What it is (``fp32``, ``int4``...).
        folder: Its ONNX model folder.
        adapter: The ``.onnx_adapter`` file activated while it runs ("" for none).
        reference: The reference's file (sequences and logits, written by the ``reference`` task).
        lean: Run in ONNX Runtime itself with weights as written (a build that is not delivered).
    """

    label: str
    folder: str
    adapter: str
    reference: str
    lean: bool = False


@dataclass(frozen=True)
class CandidateFigures:
    """The ``candidate`` task's result.

    Attributes:
        figures: One :class:`~slmops.toolkit.domain.parity.Figures` per sequence of the reference.
        runtime: What ran the build (``onnxruntime`` or ``onnxruntime-genai``).
    """

    figures: tuple[parity.Figures, ...]
    runtime: str


@dataclass(frozen=True)
class ParityResult:
    """What the parity check measured.

    Attributes:
        reference: What the reference was (``transformers 4.x (float32)``).
        sequences: ``(what, positions)`` of each sequence compared.
        figures: Label to one :class:`~slmops.toolkit.domain.parity.Figures` per sequence.
        vocab: The reference's vocabulary size (logits per position).
        steps: Each child's peak resident memory in MiB, by what it ran (``reference
            (transformers)``, ``int4 (onnxruntime-genai)``...); a reference read from the cache has none.
    """

    reference: str
    sequences: tuple[tuple[str, int], ...]
    figures: dict[str, tuple[parity.Figures, ...]]
    vocab: int
    steps: dict[str, float] = field(default_factory=dict)
