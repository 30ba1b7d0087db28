"""What a run deploys: the model, or a LoRA fine-tune of it (the demo trains one), and its negative control.

A run with an adapter (``adapter``, or the demo's bundled Veloria fine-tune) converts the
adapter merged into its base at every precision, and also the base alone at FP32: the
checklist asks the base the same domain cases, so a case the base already passes is shown
to test nothing about the fine-tune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.domain import datasets, options, packaged, tools
from slmops.toolkit.domain.options import Precision
from slmops.toolkit.domain.results.conversion import Manifest
from slmops.toolkit.domain.templates import PromptTemplate
from slmops.toolkit.stages import convert, finetune, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.weights.adapter_inspect import inspect_adapter
from slmops.toolkit.weights.bundled import bundled_model

CONTROL_DIR = "control-fp32"  # under the run's models folder
CONTROL_SUFFIX = "base"  # registered as PREFIX-base


@dataclass(frozen=True)
class RunSource:
    """The inputs of a run, resolved.

    Attributes:
        model: What the convert stage takes: the Hugging Face folder, or the adapter folder.
        base: The base model's Hugging Face folder.
        adapter: The LoRA adapter (None: the model as it is).
        trained: The fine-tune that made ``adapter``, when this run trained it (the demo).
        cases: The checklist's cases file (None: the bundled SmolLM2 cases).
    """

    model: Path
    base: Path
    adapter: Path | None = None
    trained: finetune.FinetuneResult | None = None
    cases: Path | None = None


def prepare(model_dir: str, adapter: str, train: bool, cases: str, run_dir: str | os.PathLike[str], *,
            progress: bool = True) -> RunSource:
    """Resolve a run's model, adapter and cases; train the bundled fine-tune on first use.

    Args:
        model_dir: The run's ``model_dir`` (empty: the bundled SmolLM2).
        adapter: The run's ``adapter`` (empty: none).
        train: The run's ``finetune``: with the bundled model (or a packaged one, see
            :mod:`slmops.toolkit.domain.packaged`) and no adapter, deploy the Veloria fine-tune of it.
        cases: The run's ``cases`` (empty: the fine-tune dataset's cases, written to ``run_dir/cases.jsonl``,
            for the bundled fine-tune; else the bundled SmolLM2 cases).
    """
    base = Path(model_dir).expanduser() if model_dir else bundled_model()
    if adapter:
        checked = inspect_adapter(adapter, base if model_dir else None)
        return RunSource(checked.path, checked.base, checked.path, None, Path(cases) if cases else None)
    if train and _trains(model_dir):
        trained = finetune.bundled_adapter(base, progress=progress)
        learned_tools = tools.find_markers(base) is not None  # else the fine-tune skipped its tool examples
        chosen = Path(cases) if cases else datasets.write_cases(datasets.load_dataset(), Path(run_dir) / "cases.jsonl",
                                                                 with_tools=learned_tools)
        return RunSource(trained.adapter, base, trained.adapter, trained, chosen)
    return RunSource(base, base, None, None, Path(cases) if cases else None)


def cases_file(model_dir: str, adapter: str, train: bool, cases: str, run_dir: str | os.PathLike[str]) -> Path | None:
    """The cases file :func:`prepare` chose for this run (without training anything)."""
    if cases:
        return Path(cases)
    return Path(run_dir) / "cases.jsonl" if train and _trains(model_dir) and not adapter else None


def tool_case(model_dir: str, adapter: str, train: bool) -> dict | None:
    """A tool question of the run's fine-tune with its tools (a ``tool_call`` case), or None when it learned none.

    For notebook 02's call through the endpoint: the bundled fine-tune's dataset has tool examples.
    """
    if adapter or not (train and _trains(model_dir)):
        return None
    base = Path(model_dir).expanduser() if model_dir else bundled_model()
    if tools.find_markers(base) is None:  # no tool-call tokens: the fine-tune skipped its tool examples
        return None
    return datasets.tool_probe(datasets.load_dataset())


def _trains(model_dir: str) -> bool:
    """Whether the run's ``finetune`` applies: the bundled model, or a packaged one (Gemma 3 270M)."""
    return not model_dir or packaged.packaged_key(Path(model_dir).expanduser()) is not None


def convert_from(picked: str | os.PathLike[str], source: RunSource) -> Path:
    """What to convert for the model picked in notebook 01: the run's adapter when its base is picked."""
    picked = Path(picked).expanduser().resolve()
    return source.model if source.adapter and picked == source.base.resolve() else picked


def convert_all(source: RunSource, picked: str | os.PathLike[str], precisions: list[str],
                models_dir: str | os.PathLike[str], **convert_options) -> list[Manifest]:
    """Convert what was picked (the fine-tune when its base is picked) at each precision, and the control.

    ``convert_options`` go to :func:`slmops.toolkit.stages.convert.convert_all` (method, INT4 options).
    """
    model = convert_from(picked, source)
    fine_tuned = source.adapter is not None and model == source.model
    manifests = convert.convert_all(model, precisions, models_dir, base=source.base if fine_tuned else None,
                                    **convert_options)
    if fine_tuned:  # the base alone at FP32: the checklist's negative control
        convert.convert(ConvertSpec(source.base, Path(models_dir) / CONTROL_DIR, Precision.FP32),
                        progress=convert_options.get("progress", True))
    return manifests


def control_name(run_dir: str | os.PathLike[str], prefix: str) -> str | None:
    """The registered name of the run's negative control, when it has one."""
    return f"{prefix}-{CONTROL_SUFFIX}" if (Path(run_dir) / "models" / CONTROL_DIR / "genai_config.json").is_file() \
        else None


def register_control(models_dir: str | os.PathLike[str], prefix: str, *, template: str = "auto",
                     custom_template: PromptTemplate | None = None, cache: str | os.PathLike[str] | None = None,
                     repetition_penalty: float = options.REPETITION_PENALTY) -> str | None:
    """Register the control build as ``PREFIX-base`` (when the run made one) with the run's template and penalty.

    Returns:
        Its registered name, or None when the run made no control build.
    """
    folder = Path(models_dir) / CONTROL_DIR
    if not (folder / "genai_config.json").is_file():
        return None
    name = f"{prefix}-{CONTROL_SUFFIX}"
    # Threads as the checked models get them: the base at FP32 shares the fine-tuned FP32's graph, so its
    # thread probe is read back, not run again; the runtime's default (one thread of two here) made the
    # control's 40 answers to the token budget take 126 s instead of about 66.
    register.register(folder, name, template=template, custom_template=custom_template,
                      model_config=register.ModelConfig(repetition_penalty=repetition_penalty), cache=cache,
                      force=True)
    return name
