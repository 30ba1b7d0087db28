"""The payloads the ONNX Runtime GenAI child is asked and answers (:mod:`slmops.toolkit.runtimes.genai`'s tasks).

Plain frozen dataclasses, sent through the codec (:mod:`slmops.toolkit.core.codec`); nothing here loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmops.toolkit.domain.results.bench import TimedRun


@dataclass(frozen=True)
class BenchJob:
    """What the direct benchmark's child is asked (the ``bench`` task's payload).

    Attributes:
        model_dir: The ONNX model folder.
        prompts: Prompts as token ids.
        gen_lengths: Tokens to generate after each prompt, each length in turn.
        repeats: Timed runs per prompt and length.
        warmup: Untimed runs before them.
        threads: ONNX Runtime intra-op threads (0: the runtime's default).
    """

    model_dir: str
    prompts: tuple[tuple[int, ...], ...]
    gen_lengths: tuple[int, ...]
    repeats: int
    warmup: int
    threads: int = 0


@dataclass(frozen=True)
class DirectBench:
    """What the direct benchmark's child measured (the ``bench`` task's result).

    Attributes:
        load_s: Seconds to load the model.
        load_rss_mib: Resident memory the load added, MiB.
        peak_rss_mib: The child's peak resident memory, MiB.
        runs: Timed runs, per prompt, per generation length (``runs[prompt][length]``).
    """

    load_s: float
    load_rss_mib: float
    peak_rss_mib: float
    runs: tuple[tuple[tuple[TimedRun, ...], ...], ...]


@dataclass(frozen=True)
class Agreement:
    """How closely a quantized build follows its FP32 reference on one text.

    Measured teacher-forced (both models read the same tokens), like llama.cpp's
    ``perplexity --kl-divergence``: at every position, does the greedy (top-1) next token
    match, how far apart are the distributions, and how well does each predict the text.

    Attributes:
        model: Candidate label.
        tokens: Positions compared.
        top1_agreement: Share of positions where the greedy next token is the reference's.
        kl_divergence: Mean KL divergence reference || candidate, in nats.
        perplexity: Candidate's perplexity on the text.
        reference_perplexity: The FP32 reference's perplexity on the same text.
        kl_divergence_to_base: Mean KL divergence base || candidate, in nats (None: no base model given).
    """

    model: str
    tokens: int
    top1_agreement: float
    kl_divergence: float
    perplexity: float
    reference_perplexity: float
    kl_divergence_to_base: float | None = None


@dataclass(frozen=True)
class CompareJob:
    """What the agreement child is asked (the ``compare`` task's payload).

    Attributes:
        reference: The FP32 build's folder.
        text: The text both models read.
        candidates: Label to ONNX model folder.
        base: The base model's FP32 build, or None.
    """

    reference: str
    text: str
    candidates: dict[str, str]
    base: str | None = None


@dataclass(frozen=True)
class DecodeJob:
    """What the decode probe's child is asked (the ``decode`` task's payload; its result is tokens/s by label).

    Attributes:
        models: Label to ONNX model folder.
    """

    models: dict[str, str]


@dataclass(frozen=True)
class ThreadJob:
    """What the thread probe's child is asked (the ``threads`` task's payload).

    Attributes:
        model_dir: The ONNX model folder.
        ids: The prompt as token ids.
        counts: Intra-op thread counts to try (0: the runtime's default).
    """

    model_dir: str
    ids: tuple[int, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class BandwidthJob:
    """What the bandwidth probe's child is asked (the ``bandwidth`` task's payload; its result is GB/s by count).

    Attributes:
        threads: Intra-op thread counts to measure with (0: ONNX Runtime's default).
    """

    threads: tuple[int, ...]

