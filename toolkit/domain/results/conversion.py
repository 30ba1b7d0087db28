"""The conversion stage's result: each build's ``manifest.json``, and ``convert.json`` (the list of them).

One record, :class:`Manifest`, built once by the conversion stage and written with the codec
(:mod:`slmops.toolkit.core.codec`); :func:`read_manifest` (one build's folder) and
:func:`read_conversions` (a run's ``convert.json``) are its readers, :func:`write_manifest` and
:func:`write_conversions` its writers. Later steps that add to a build's record (the recipe it was
adopted as, the build cache entry it came from) replace fields of the record and write it again.

Version history of a manifest:

1. (no ``schema_version``) as version 2 without the field.
2. ``schema_version`` recorded; memory figures (MiB) under ``_mb`` names.
3. Memory figures under ``_mib`` names (``peak_rss_mib``, ``memory.predicted_peak_mib``,
   ``memory.measured_peak_mib``, ``memory.available_mib_at_start``); ``_mb`` is left to sizes
   on disk (10^6 bytes: ``size_mb``, ``source_size_mb``, ``fp32_size_mb``). Every field of
   :class:`Manifest` is written (one not set as ``null`` or empty, where earlier builds left it out).
4. ``options`` is the INT4 options record (every field of
   :class:`~slmops.toolkit.domain.options.Int4Options`), ``null`` for a build of another precision
   (version 3 wrote ``{}`` there); :meth:`Manifest.upgrade` reads version 3's. ``lora_branch`` came later in
   version 4 (a manifest without it reads as ``null``).

Versions 1 and 2 were never released: they are read as written (their memory figures, under the
old names, are not shown). A version this toolkit does not know is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from slmops.toolkit.core import artifacts, codec
from slmops.toolkit.core.artifacts import MANIFEST
from slmops.toolkit.domain.options import Int4Options
from slmops.toolkit.domain.parity import ParityCheck, Verdict
from slmops.toolkit.domain.quant_plan import LoraBranched, QuantPlan
from slmops.toolkit.domain.results.merge import MergeRecord

#: The version the conversion stage writes into each manifest.
SCHEMA_VERSION = 4
#: The list of a run's manifests, in its models folder.
CONVERSIONS = "convert.json"


@dataclass(frozen=True)
class MemoryRecord:
    """The conversion's memory: predicted before it started, measured as it ran (MiB).

    Attributes:
        predicted_peak_mib: The predicted peak (the largest step's prediction).
        peak_step: The step predicted to peak.
        steps: The prediction of each step.
        basis: What the prediction was computed from.
        available_mib_at_start: Memory available when the conversion started.
        measured_peak_mib: The largest peak RSS of any step (child process) that ran.
        measured_steps: Each step's measured peak RSS (named after its log).
        checked: Whether the prediction was checked against the available memory before starting.
    """

    predicted_peak_mib: float = 0.0
    peak_step: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    basis: str = ""
    available_mib_at_start: float = 0.0
    measured_peak_mib: float = 0.0
    measured_steps: dict[str, float] = field(default_factory=dict)
    checked: bool = True


@dataclass(frozen=True)
class ParityGate:
    """The build checked against its source in transformers (``parity`` in the manifest).

    Attributes:
        verdict: ``pass``, or ``not checked`` (a build for another execution provider).
        checks: One per build checked: the FP32 model a quantizer started from, then the build itself.
        wall_s: Seconds the check took.
        reason: Why it was not checked.
        more_adapters: The same check of each further adapter kept apart, by adapter name.
        steps_mib: The peak RSS of each phase of the check (the reference in transformers, then each
            build), in MiB: each runs in its own child, one after the other.
    """

    verdict: str = "not checked"
    checks: tuple[ParityCheck, ...] = ()
    wall_s: float | None = None
    reason: str = ""
    more_adapters: dict[str, ParityGate] = field(default_factory=dict)
    steps_mib: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every build checked passed."""
        return self.verdict == str(Verdict.PASS)

    def own_figures(self) -> tuple[float, float, float] | None:
        """How the build itself (the last check) follows its source: top-1 agreement, the largest logit
        difference as a share of the logit range, KL in nats (None when nothing was checked)."""
        if not self.checks:
            return None
        own = self.checks[-1]
        return own.top1_agreement, own.max_diff_of_range, own.kl_divergence


@dataclass(frozen=True)
class WeightSummary:
    """Where a build's weights went, read from its graph (``weights`` in the manifest).

    Attributes:
        parameters: Parameter counts per storage type (``fp32``, ``int4``, ``int8``...).
        lm_head: The LM head's storage type (``absent`` when the graph has none by that name).
        embeddings: The embedding table's storage type.
    """

    parameters: dict[str, int] = field(default_factory=dict)
    lm_head: str = "absent"
    embeddings: str = "absent"


@dataclass(frozen=True)
class AdapterFile:
    """One ``.onnx_adapter`` file of a build whose LoRA was kept apart.

    Attributes:
        path: The file, relative to the build.
        name: The adapter's name (the file's stem).
        bytes: Its size.
        bits_per_weight: Bits per weight of the base with this adapter (over the base's parameters).
    """

    path: str
    name: str
    bytes: int
    bits_per_weight: float


@dataclass(frozen=True)
class BuildCacheEntry:
    """Where a build copied from the build cache came from.

    Attributes:
        key: The cache key (source, versions, code and options).
        entry: The cache folder it was copied from.
    """

    key: str
    entry: str


@dataclass(frozen=True)
class Manifest:
    """One conversion: route, options, versions, cost, size, where the weights went and its parity check.

    Attributes:
        model: The source folder's name.
        source_path: The source (the merged model for a LoRA adapter).
        source_fingerprint: The source's fingerprint (16 hex digits).
        architecture: The source's architecture (``config.json``).
        parameters: The source's parameter count.
        method: The route (``builder``, ``olive``, ``olive-config``).
        precision: The weight precision built.
        execution_provider: ``cpu`` or ``cuda``.
        options: The INT4 options (None for a build of another precision).
        quantizer: The toolkit's quantizer plan, when it quantized the build.
        eos_token_id: The stop token ids written to ``genai_config.json``.
        eos_token_id_from: Where they came from.
        weights: Where the weights went (parameters by precision, LM head, embeddings).
        commands: Each tool's command.
        wall_s: Wall time of the build's tools, s.
        tool_wall_s: Each tool's wall time, s.
        peak_rss_mib: The largest peak RSS of any step, MiB.
        size_mb: The build on disk, MB (10^6 bytes).
        source_size_mb: The source checkpoint on disk, MB.
        fp32_size_mb: The FP32 build's size (measured or estimated), MB.
        fp32_size_from: Where ``fp32_size_mb`` comes from.
        size_ratio_vs_fp32: ``size_mb`` over ``fp32_size_mb``.
        tutorial_size_ratio: The tutorial table's ratio for this precision.
        size_vs_tutorial: ``size_ratio_vs_fp32`` over ``tutorial_size_ratio``.
        versions: Versions of the packages that made the build.
        python: The Python version.
        created: When it was built (ISO 8601).
        memory: Predicted and measured memory.
        parity: The check against the source in transformers (None: a manifest written before it was made).
        quantized_from: The FP32 build the quantizer started from, when one was reused.
        adapter: The LoRA adapter's merge record (``merge.json``), for a fine-tune.
        adapter_files: The adapter files of a build whose LoRA was kept apart (its own first).
        base_size_mb: With the LoRA kept apart: the graph and its weights, MB.
        bits_per_weight: With the LoRA kept apart: bits per weight counting the first adapter.
        bits_per_weight_without_adapter: With the LoRA kept apart: bits per weight of the base alone.
        more_adapters: Merge records of further adapters kept apart beside the first.
        lora_branch: With the LoRA a side branch in the graph (``--adapter-in-graph``, quantized): its error rank,
            storage bits and layout, and how many branches grew and were folded (None: no branch, or a manifest
            written before it was recorded).
        recipe: The INT4 recipe this build was adopted as (the recipe comparison), if any.
        build_cache: Where a build copied from the build cache came from.
        output_dir: The build's folder (in ``convert.json``).
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    KIND: ClassVar[str] = "conversion manifest"

    model: str = ""
    source_path: str = ""
    source_fingerprint: str = ""
    architecture: str = ""
    parameters: int = 0
    method: str = ""
    precision: str = ""
    execution_provider: str = "cpu"
    options: Int4Options | None = None
    quantizer: QuantPlan | None = None
    eos_token_id: tuple[int, ...] = ()
    eos_token_id_from: str = ""
    weights: WeightSummary = field(default_factory=WeightSummary)
    commands: tuple[tuple[str, ...], ...] = ()
    wall_s: float = 0.0
    tool_wall_s: tuple[float, ...] = ()
    peak_rss_mib: float = 0.0
    size_mb: float = 0.0
    source_size_mb: float = 0.0
    fp32_size_mb: float = 0.0
    fp32_size_from: str = ""
    size_ratio_vs_fp32: float | None = None
    tutorial_size_ratio: float = 0.0
    size_vs_tutorial: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    python: str = ""
    created: str = ""
    memory: MemoryRecord = field(default_factory=MemoryRecord)
    parity: ParityGate | None = None
    quantized_from: str | None = None
    adapter: MergeRecord | None = None
    adapter_files: tuple[AdapterFile, ...] = ()
    base_size_mb: float | None = None
    bits_per_weight: float | None = None
    bits_per_weight_without_adapter: float | None = None
    more_adapters: tuple[MergeRecord, ...] = ()
    lora_branch: LoraBranched | None = None
    recipe: str = ""
    build_cache: BuildCacheEntry | None = None
    output_dir: str = ""

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        """An older manifest in the current shape: version 3's empty ``options`` (a build not INT4) as None.

        Versions 1 and 2 are read as written (see the module's version history).
        """
        if not data.get("options"):
            data["options"] = None
        return data

    @property
    def kept_apart(self) -> bool:
        """Whether the build's LoRA adapter was kept apart from its weights (an adapter file beside them)."""
        return bool(self.adapter_files)


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of the build in ``model_dir``, or None when it has none (a folder this toolkit did not convert).

    Raises:
        InputError: the file is not UTF-8 JSON.
        ResultVersionError: written by a newer toolkit.
        RecordError: a field of the wrong type.

    Example:
        >>> read_manifest("outputs/demo/models/int4").precision
        'int4'
    """
    data = artifacts.read_json(Path(model_dir) / MANIFEST)
    return codec.load(Manifest, data, kind=str(Path(model_dir) / MANIFEST)) if isinstance(data, dict) else None


def write_manifest(model_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Write ``manifest`` as ``model_dir/manifest.json`` (atomically)."""
    return codec.write(Path(model_dir) / MANIFEST, manifest)


def read_conversions(path: str | os.PathLike[str]) -> list[Manifest]:
    """The manifests of a run's ``convert.json`` (an empty list when there is none).

    Raises:
        ResultVersionError: a manifest written by a newer toolkit.
        RecordError: a field of the wrong type.

    Example:
        >>> [m.precision for m in read_conversions("outputs/demo/models/convert.json")]
        ['fp32', 'int8', 'int4']
    """
    found = artifacts.read_json(Path(path), []) or []
    entries = [m for m in found if isinstance(m, dict) and "precision" in m] if isinstance(found, list) else []
    return [codec.load(Manifest, entry, kind=f"conversion manifest in {path}") for entry in entries]


def write_conversions(path: str | os.PathLike[str], manifests: list[Manifest]) -> Path:
    """Write a run's ``convert.json``: the list of its builds' manifests (each with its ``output_dir``)."""
    return artifacts.write_json(path, [codec.dump(m) for m in manifests])
