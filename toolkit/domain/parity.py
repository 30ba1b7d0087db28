"""Parity: does a build compute what its source model computes?

The reference is transformers' forward pass of the source Hugging Face folder in FP32; the
candidate is the ONNX Runtime GenAI build reading the same token ids. Both give next-token
logits ``[T, vocab]`` at every position, compared teacher-forced as llama.cpp's
``perplexity --kl-divergence`` does: top-1 agreement (share of positions whose greedy next
token is the same), the largest and mean absolute logit difference (also as a share of the
reference's logit range, so models of any scale read alike) and the mean KL divergence
reference || candidate in nats.

Two tolerances, one per kind of build:

* an FP32 build must be the same function: the only differences allowed are those of
  summation order between PyTorch's and ONNX Runtime's kernels, orders of magnitude below what a
  build that applies a sliding window to the wrong layers or the wrong RoPE base differs by (the
  benchmarks page's parity section gives both, per family);
* a quantized build is compared by what quantization is allowed to change: its top-1
  agreement and KL divergence (a broken build falls to chance and several nats).

A top-1 bound is judged up to near ties (:data:`TIE_MARGIN`): a position agrees when the build's
greedy token is one the reference finds at least half as likely as its own. Where the reference
has decided (its favourite twice as likely as any other token) that is plain top-1 agreement;
where two tokens are near a tie, which comes first is below any build's resolution. Random
weights of a real vocabulary (150k tokens) are near ties at every position: a faithful INT4 of
one agreed on 8% of positions by plain top-1 at a KL of 0.06 nats, while a build that puts the
same logits on the wrong tokens agrees on none, up to ties or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np

from slmops.toolkit.core import codec
from slmops.toolkit.core.errors import ParityError

#: Version of the ``parity`` record in ``manifest.json`` (2 adds ``top1_up_to_ties``; a version 1
#: record reads with it equal to ``top1_agreement``, its lower bound).
SCHEMA_VERSION = 2
#: Positions of the reference text compared (the bundled text is about 430 SmolLM2 tokens).
TEXT_POSITIONS = 512
#: Positions past the sliding window in the second sequence, so its windowed layers matter (128 also
#: brings a Gemma 3 check to over 1,000 positions: 426 of text and 640 past its window of 512).
PAST_WINDOW = 128
#: Longest second sequence: windows beyond this are not exercised (recorded as such).
LONGEST_SEQUENCE = 4160
#: Positions compared at once when computing the figures (bounds the float64 copies).
_CHUNK = 64
#: Two tokens are near a tie when their reference logits differ by less than this (nats: ln 2, one
#: token less than twice as likely as the other).
TIE_MARGIN = float(np.log(2.0))


class Verdict(StrEnum):
    """Outcome of a parity check."""

    PASS = "pass"
    FAIL = "fail"


@dataclass(frozen=True)
class Tolerance:
    """What a build may differ from its reference by.

    Attributes:
        min_top1: Lowest top-1 agreement allowed (share of positions, 0-1).
        max_diff_of_range: Largest absolute logit difference allowed, as a share of the
            reference's logit range (max minus min over all positions); ``None``: not checked.
        max_kl: Largest mean KL divergence allowed, nats; ``None``: not checked.
    """

    min_top1: float
    max_diff_of_range: float | None = None
    max_kl: float | None = None


#: FP32 against FP32: the same function up to summation order.
EXACT = Tolerance(min_top1=0.99, max_diff_of_range=0.01)
#: FP32 against a bf16 reference (a source too large to load in FP32 here): bf16's rounding of activations.
NEAR = Tolerance(min_top1=0.95, max_diff_of_range=0.05)
#: A quantized build against FP32: what 4- and 8-bit weights are allowed to change.
QUANTIZED = Tolerance(min_top1=0.25, max_kl=1.5)


@dataclass(frozen=True)
class Figures:
    """How closely one candidate's logits follow the reference's.

    Attributes:
        positions: Token positions compared.
        top1_agreement: Share of positions with the same greedy next token (0-1).
        max_abs_diff: Largest absolute logit difference.
        mean_abs_diff: Mean absolute logit difference.
        logit_range: The reference's largest minus smallest logit.
        kl_divergence: Mean KL divergence reference || candidate, nats.
        top1_up_to_ties: Share of positions whose greedy token the reference finds at least half as
            likely as its own (0-1, at least ``top1_agreement``; see :data:`TIE_MARGIN`).
    """

    positions: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    logit_range: float
    kl_divergence: float
    top1_up_to_ties: float = 0.0

    @property
    def max_diff_of_range(self) -> float:
        """The largest difference as a share of the logit range."""
        return self.max_abs_diff / self.logit_range if self.logit_range else 0.0

    def verdict(self, tolerance: Tolerance) -> Verdict:
        """Pass when every bound of ``tolerance`` holds (top-1 judged up to near ties)."""
        ok = self.top1_up_to_ties >= tolerance.min_top1
        if tolerance.max_diff_of_range is not None:
            ok = ok and self.max_diff_of_range <= tolerance.max_diff_of_range
        if tolerance.max_kl is not None:
            ok = ok and self.kl_divergence <= tolerance.max_kl
        return Verdict.PASS if ok else Verdict.FAIL


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities ``[..., vocab]`` from logits, along the last axis (shifted by the maximum for stability)."""
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def figures(reference: np.ndarray, candidate: np.ndarray) -> Figures:
    """Compare two ``[T, vocab]`` logit arrays position by position.

    Args:
        reference: The source model's logits.
        candidate: The build's logits on the same token ids (same shape; a wider vocabulary,
            as builders pad tables, is cut to the reference's).

    Raises:
        ValueError: the position counts differ, or the candidate's vocabulary is smaller.

    Example:
        >>> f = figures(np.eye(3), np.eye(3) * 1.01)
        >>> f.top1_agreement, round(f.max_abs_diff, 2)
        (1.0, 0.01)
    """
    if reference.shape[0] != candidate.shape[0] or candidate.shape[1] < reference.shape[1]:
        raise ValueError(f"logits of shape {candidate.shape} cannot be compared with {reference.shape}")
    candidate = candidate[:, :reference.shape[1]]
    top1 = max_diff = diff_sum = kl_sum = near = 0.0
    low, high = np.inf, -np.inf
    # float32 arithmetic, float64 totals: a 262k vocabulary over 1,000 positions in seconds, KL within
    # ~1e-5 of its value (measured against float64 on 434 x 49k random logits: 7e-6).
    for start in range(0, reference.shape[0], _CHUNK):
        ref = np.asarray(reference[start:start + _CHUNK], dtype=np.float32)
        cand = np.asarray(candidate[start:start + _CHUNK], dtype=np.float32)
        diff = np.abs(ref - cand)
        chosen = cand.argmax(-1)
        top1 += float((ref.argmax(-1) == chosen).sum())
        near += float((ref[np.arange(len(ref)), chosen] >= ref.max(-1) - TIE_MARGIN).sum())
        max_diff = max(max_diff, float(diff.max()))
        diff_sum += float(diff.mean(-1, dtype=np.float64).sum())
        low, high = min(low, float(ref.min())), max(high, float(ref.max()))
        ref_log, cand_log = log_softmax(ref), log_softmax(cand)
        kl_sum += float(np.einsum("tv,tv->t", np.exp(ref_log), ref_log - cand_log).sum(dtype=np.float64))
    count = reference.shape[0]
    return Figures(positions=count, top1_agreement=top1 / count, max_abs_diff=max_diff,
                   mean_abs_diff=diff_sum / count, logit_range=high - low, kl_divergence=max(kl_sum / count, 0.0),
                   top1_up_to_ties=near / count)


def merge(parts: list[Figures]) -> Figures:
    """Figures over several sequences as if they were one (weighted by positions)."""
    count = sum(p.positions for p in parts)

    def mean(field: str) -> float:
        return sum(getattr(p, field) * p.positions for p in parts) / count

    low_high = max(p.logit_range for p in parts)
    return Figures(positions=count, top1_agreement=mean("top1_agreement"),
                   max_abs_diff=max(p.max_abs_diff for p in parts), mean_abs_diff=mean("mean_abs_diff"),
                   logit_range=low_high, kl_divergence=mean("kl_divergence"), top1_up_to_ties=mean("top1_up_to_ties"))


@dataclass(frozen=True)
class SequenceRead:
    """One token sequence a parity check read.

    Attributes:
        what: What it is (``the reference text``, ``past the sliding window of 512``).
        positions: Its token positions.
    """

    what: str
    positions: int


@dataclass(frozen=True)
class ParityCheck:
    """One build checked against its source: the record ``manifest.json`` keeps under ``parity``.

    The figures over all sequences are flat fields, rounded as the manifest keeps them (:func:`judge`
    rounds them); :attr:`figures` gives them as :class:`Figures`. Each record carries its own
    ``schema_version`` (see :data:`SCHEMA_VERSION`): a version-1 record has no ``top1_up_to_ties``
    and reads with it equal to ``top1_agreement``, its lower bound; a later version is refused.

    Attributes:
        build: What was checked (``fp32``, or e.g. ``int4`` for the final quantized model).
        reference: What it was compared with, in words (library, version, dtype).
        sequences: Each token sequence read.
        positions: Token positions compared over all sequences.
        top1_agreement: Share of positions with the same greedy next token (0-1).
        max_abs_diff: Largest absolute logit difference.
        mean_abs_diff: Mean absolute logit difference.
        logit_range: The reference's largest minus smallest logit.
        kl_divergence: Mean KL divergence reference || candidate, nats.
        tolerance: The bounds applied.
        verdict: Pass or fail.
        top1_up_to_ties: Top-1 agreement up to near ties (None when read: ``top1_agreement``).
        schema_version: The record's version (1 or 2; written as 2).
        max_diff_of_range: The largest difference as a share of the logit range (computed, written for readers).
    """

    build: str
    reference: str
    sequences: tuple[SequenceRead, ...]
    positions: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    logit_range: float
    kl_divergence: float
    tolerance: Tolerance
    verdict: Verdict
    top1_up_to_ties: float | None = None
    schema_version: Literal[1, 2] = SCHEMA_VERSION
    max_diff_of_range: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.top1_up_to_ties is None:
            object.__setattr__(self, "top1_up_to_ties", self.top1_agreement)
        object.__setattr__(self, "schema_version", SCHEMA_VERSION)
        share = self.max_abs_diff / self.logit_range if self.logit_range else 0.0
        object.__setattr__(self, "max_diff_of_range", float(f"{share:.4g}"))

    @property
    def figures(self) -> Figures:
        """The figures over all sequences."""
        return Figures(positions=self.positions, top1_agreement=self.top1_agreement, max_abs_diff=self.max_abs_diff,
                       mean_abs_diff=self.mean_abs_diff, logit_range=self.logit_range,
                       kl_divergence=self.kl_divergence, top1_up_to_ties=self.top1_up_to_ties)

    def in_words(self) -> str:
        """One line for tables and ``doctor``: the figures and the verdict."""
        f = self.figures
        return (f"{self.verdict}: top-1 agreement {f.top1_agreement:.4f} ({f.top1_up_to_ties:.4f} up to near ties), "
                f"largest logit difference "
                f"{f.max_abs_diff:.3g} ({f.max_diff_of_range:.2%} of the range {f.logit_range:.3g}), "
                f"KL {f.kl_divergence:.3g} nats over {f.positions} positions")


def judge(build: str, reference: str, sequences: list[tuple[str, int]], parts: list[Figures],
          tolerance: Tolerance) -> ParityCheck:
    """The :class:`ParityCheck` of one build from its per-sequence figures (judged before they are rounded).

    Example:
        >>> f = figures(np.eye(3), np.eye(3) * 1.01)
        >>> check = judge("fp32", "transformers", [("text", 3)], [f], EXACT)
        >>> str(check.verdict), check.sequences[0].positions, check.max_abs_diff
        ('pass', 3, 0.01)
    """
    total = merge(parts)

    def sig4(value: float) -> float:
        return float(f"{value:.4g}")

    return ParityCheck(build, reference, tuple(SequenceRead(what, n) for what, n in sequences), total.positions,
                       round(total.top1_agreement, 5), sig4(total.max_abs_diff), sig4(total.mean_abs_diff),
                       round(total.logit_range, 3), sig4(total.kl_divergence), tolerance, total.verdict(tolerance),
                       round(total.top1_up_to_ties, 5))


def refuse(check: ParityCheck, architecture: str, route: str, size_mb: float | None = None) -> ParityError:
    """The one-line error for a build that failed its check: the architecture, the figure and what to do.

    The error's ``record`` is the check as the manifest keeps it (:func:`~slmops.toolkit.core.codec.dump`) with the
    refused build's ``size_mb``
    (for a caller that compares builds, such as the INT4 recipe comparison).
    """
    f = check.figures
    bounds = [f"top-1 agreement up to near ties at least {check.tolerance.min_top1}"]
    if check.tolerance.max_diff_of_range is not None:
        bounds.append(f"largest difference at most {check.tolerance.max_diff_of_range:.0%} of the range")
    if check.tolerance.max_kl is not None:
        bounds.append(f"KL at most {check.tolerance.max_kl} nats")
    where = ", ".join(f"{s.what} ({s.positions})" for s in check.sequences)
    return ParityError(
        f"The {check.build} build of {architecture} by the {route} route does not compute what its source model "
        f"computes in {check.reference}: top-1 agreement {f.top1_agreement:.4f} ({f.top1_up_to_ties:.4f} up to "
        f"near ties), largest logit difference "
        f"{f.max_abs_diff:.3g} ({f.max_diff_of_range:.2%} of the logit range {f.logit_range:.3g}), KL "
        f"{f.kl_divergence:.3g} nats over {f.positions} positions of {where}; allowed: {'; '.join(bounds)}. "
        "Nothing was put in place. Try another route (--method builder or olive) or precision; if every route "
        "fails, this family is not converted exactly by the installed builder: report it with the manifest's "
        "figures.", {**codec.dump(check), "size_mb": size_mb})
