"""Stage 2: register a converted model with Foundry Local.

Lays the model out as the ``foundry`` CLI expects (``<cache>/models/custom/NAME/`` with
``inference_model.json``), makes the tokenizer's chat template match the chosen
``PromptTemplate`` (that is what the SDK's ChatSession reads), writes ``ModelConfig``
into ``genai_config.json``'s search defaults, and registers ``NAME:VERSION`` in Foundry
Local's local catalog. Everything is checked and staged before anything is replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import (
    InvalidOptionError,
    ModelFolderError,
    NameTakenError,
    RegistrationError,
)
from slmops.toolkit.core.measure import timestamp
from slmops.toolkit.domain import options, template_resolve, templates, tools
from slmops.toolkit.domain.genai_config import config_problem
from slmops.toolkit.domain.results.conversion import read_conversions
from slmops.toolkit.domain.results.registration import (
    REGISTRATION_RECORD,
    RegisteredModel,
    RegistrationRecord,
    StopTokens,
    ThreadSetting,
    ToolCallingRecord,
    read_registration,
    write_registered,
    write_registration,
)
from slmops.toolkit.runtimes.foundry_session import catalog_register, models_root
from slmops.toolkit.stages.register_catalog import (
    INFERENCE_MODEL,
    validate_name,
)
from slmops.toolkit.stages.register_prompt import PROMPT_BITS, serve_graphs
from slmops.toolkit.stages.register_stop import reconcile_stop_tokens, token_ids
from slmops.toolkit.stages.register_threads import (
    AUTO_THREADS,
    ThreadChoice,
    choose_threads,
)
from slmops.toolkit.stages.register_tools import (
    ToolCalling,
    fine_tune_probe,
    probe_tool_calling,
)
from slmops.toolkit.weights import lm_head
from slmops.toolkit.weights.context_limit import context_problem


@dataclass(frozen=True)
class ModelConfig:
    """Generation defaults for ``inference_model.json`` and ``genai_config.json``.

    Attributes:
        max_length: Prompt plus answer, in tokens (at most the model's context); None means
            the tutorial's 2048, or the model's context when shorter.
        temperature: Sampling temperature, 0 to 2.
        top_p: Nucleus sampling mass, (0, 1].
        repetition_penalty: 1 means none; 1 to 2.
        threads: CPU threads ONNX Runtime uses for one request (``intra_op_num_threads`` in
            ``genai_config.json``, as Ollama's ``num_thread``): a count, ``"auto"`` (a short probe
            of decode speed and time to first token at each count picks the fastest, see
            :func:`pick_threads`), or None for the runtime's default (which may use fewer
            threads than there are cores).
        prompt_bits: The bits the served prompt graph's 4-bit projections run in (:data:`PROMPT_BITS`): 8 for the
            faster prompt (the prompt session then holds 8-bit weights), 4 for the smaller memory.
    """

    max_length: int | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = options.REPETITION_PENALTY
    threads: int | str | None = AUTO_THREADS
    prompt_bits: int = PROMPT_BITS[0]

    def search_options(self) -> dict:
        """The generation defaults for ``search`` and ``inference_model.json`` (all but ``threads`` and ``prompt_bits``)."""
        options = asdict(self)
        del options["threads"], options["prompt_bits"]
        return options

    def for_context(self, context_length: int) -> ModelConfig:
        """This config with ``max_length`` filled in for a model of ``context_length`` tokens."""
        if self.max_length is not None:
            return self
        return replace(self, max_length=min(2048, context_length or 2048))

    def validate(self, context_length: int) -> None:
        """Raise :class:`InvalidOptionError` for a value out of range."""
        if self.max_length is None:
            return self.for_context(context_length).validate(context_length)
        if not isinstance(self.max_length, int) or not 1 <= self.max_length <= (context_length or self.max_length):
            raise InvalidOptionError("max_length", self.max_length,
                                     f"1..{context_length} (the model's context length)")
        if not 0 <= self.temperature <= 2:
            raise InvalidOptionError("temperature", self.temperature, "0..2")
        if not 0 < self.top_p <= 1:
            raise InvalidOptionError("top_p", self.top_p, "a number in (0, 1]")
        if not 1 <= self.repetition_penalty <= 2:
            raise InvalidOptionError("repetition_penalty", self.repetition_penalty, "1..2")
        if self.threads not in (None, AUTO_THREADS) and (type(self.threads) is not int or not 1 <= self.threads <= 256):
            raise InvalidOptionError("threads", self.threads, "a whole number from 1 to 256, 'auto', or unset")
        if self.prompt_bits not in PROMPT_BITS:
            raise InvalidOptionError("prompt_bits", self.prompt_bits, f"one of {list(PROMPT_BITS)}")


@dataclass(frozen=True)
class Registration:
    """A registered model."""

    name: str
    version: int
    model_id: str
    path: Path
    template: str
    model_config: ModelConfig = field(default_factory=ModelConfig)
    notes: tuple[str, ...] = ()
    threads: ThreadChoice | None = None
    stop: StopTokens | None = None
    tool_calling: ToolCalling | None = None


def _check_onnx_dir(onnx_dir: Path) -> dict:
    if not onnx_dir.is_dir():
        raise ModelFolderError(onnx_dir, "no such folder", "Convert first with `slmops convert`.")
    artifacts.check_no_links_leaving(onnx_dir)
    config_file = onnx_dir / "genai_config.json"
    if not config_file.is_file():
        raise ModelFolderError(onnx_dir, "no genai_config.json, so Foundry Local cannot load it",
                               "Point at the folder `slmops convert` wrote.")
    config = artifacts.read_json(config_file)
    problem = config_problem(config)
    if problem:
        raise ModelFolderError(onnx_dir, problem, "Point at the folder `slmops convert` wrote, or convert again.")
    model_file = onnx_dir / config["model"]["decoder"].get("filename", "model.onnx")
    if not model_file.is_file():
        raise ModelFolderError(onnx_dir, f"{model_file.name} is missing", "Re-run the conversion.")
    return config


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_genai_config(folder: Path, genai_config: dict, threads: int | str | None) -> None:
    decoder = genai_config["model"]["decoder"]
    eos = token_ids(genai_config["model"].get("eos_token_id"))
    if eos:
        genai_config["model"]["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    options = {k: v for k, v in decoder.get("session_options", {}).items() if k != "intra_op_num_threads"}
    if type(threads) is int:
        options["intra_op_num_threads"] = threads
    decoder["session_options"] = options
    (folder / "genai_config.json").write_text(json.dumps(genai_config, indent=4))


def _stage(onnx_dir: Path, staging: Path, genai_config: dict, resolved: template_resolve.ResolvedTemplate,
           model_config: ModelConfig, name: str, version: int, description: str) -> None:
    rewritten = {"genai_config.json", "tokenizer_config.json", "chat_template.jinja", INFERENCE_MODEL, REGISTRATION_RECORD}
    for item in onnx_dir.iterdir():
        if item.is_file() and item.name not in rewritten:
            _link_or_copy(item, staging / item.name)
    # Served prefill computes the LM head on the last position only; the full graph stays beside it.
    lm_head.serve_last_position(staging, genai_config["model"]["decoder"].get("filename", "model.onnx"))
    serve_graphs(staging, genai_config, model_config.prompt_bits)  # fused gate/up; INT4: the prompt graph
    genai_config["search"] = {**genai_config.get("search", {}), **model_config.search_options()}
    _write_genai_config(staging, genai_config, model_config.threads)
    tokenizer_file = onnx_dir / "tokenizer_config.json"
    tokenizer_config = artifacts.read_json(tokenizer_file, {})
    tokenizer_config["chat_template"] = resolved.jinja
    (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    (staging / "chat_template.jinja").write_text(resolved.jinja)
    inference_model = {
        "Name": name,
        "Description": description or f"{name} converted by slmops",
        "Version": str(version),
        "PromptTemplate": resolved.prompt_template.as_json(),
        "ModelConfig": model_config.search_options(),
    }
    (staging / INFERENCE_MODEL).write_text(json.dumps(inference_model, indent=2, ensure_ascii=False))


def _checked_config(source: Path) -> tuple[dict, int]:
    """The complete converted model's ``genai_config.json`` and its context length; refused when it is not."""
    genai_config = _check_onnx_dir(source)
    problem = context_problem(source, genai_config)
    if problem:
        raise ModelFolderError(source, problem, "Nothing was registered.")
    return genai_config, int(genai_config["model"].get("context_length", 0))


def _publish_tokens(source: Path, genai_config: dict, resolved: template_resolve.ResolvedTemplate,
                    tool_markers: tuple[str, str] | None) -> tuple[StopTokens, tools.Markers | None]:
    """Put the stop tokens and the tool-call markers (when the tokenizer has them) into ``genai_config``."""
    stop = reconcile_stop_tokens(source, genai_config, resolved.prompt_template)
    genai_config["model"]["eos_token_id"] = list(stop.eos_token_id)
    markers = tools.find_markers(source, *(tool_markers or (None, None)))
    for key in ("bot_token_id", "eot_token_id"):
        genai_config["model"].pop(key, None)
    if markers is not None:
        genai_config["model"]["bot_token_id"], genai_config["model"]["eot_token_id"] = markers.start_id, markers.end_id
    return stop, markers


def _previous_record(target: Path, source: Path, name: str, force: bool) -> RegistrationRecord | None:
    """The registration record already at ``target``; refused when it holds another model and ``force`` is off."""
    record = read_registration(target)
    if record and record.source != str(source) and not force:
        raise NameTakenError(
            f"The name {name!r} is already registered to another model ({record.source}). "
            "Choose another --name, or pass --force to replace it."
        )
    return record


def _staged_threads(staging: Path, genai_config: dict, model_config: ModelConfig,
                    context_length: int) -> tuple[ThreadChoice | None, ModelConfig]:
    """With ``--threads auto``, probe the staged folder (before anything is replaced) and write the chosen count."""
    if model_config.threads != AUTO_THREADS:
        return None, model_config
    threads = choose_threads(staging, context_length)
    _write_genai_config(staging, genai_config, threads.chosen)
    return threads, replace(model_config, threads=threads.chosen)


def _registration_record(source: Path, name: str, version: int, resolved: template_resolve.ResolvedTemplate,
                         stop: StopTokens, threads: ThreadChoice | None,
                         model_config: ModelConfig) -> RegistrationRecord:
    """The registration record written beside the model (:data:`REGISTRATION_RECORD`)."""
    return RegistrationRecord(
        str(source), name, version, str(resolved.choice), tuple(resolved.notes), timestamp(), stop,
        ThreadSetting("auto", threads.chosen, threads.speedup, threads.probe, threads.reused)
        if threads else ThreadSetting(model_config.threads))


def _swap_in(staging: Path, target: Path, name: str, version: int, cache: str | Path | None,
             markers: tools.Markers | None, record: RegistrationRecord | None) -> None:
    """Swap the staged folder into place and register it; on failure the previous registration is put back."""
    try:
        artifacts.swap_into_place(staging, target,
                                  then=lambda: _catalog_register(target, name, version, cache, markers))
    except BaseException:
        if record and record.version:  # the previous folder is back: put its registration back as it was
            with contextlib.suppress(Exception):  # the original error is the one to report
                _catalog_register(target, name, record.version, cache, tools.registered_markers(target),
                                  supports_tool_calling=bool(record.tool_calling and
                                                             record.tool_calling.supports_tool_calling))
        raise


def _probe_tools(target: Path, source: Path, name: str, version: int, cache: str | Path | None,
                 markers: tools.Markers | None, tool_probe: dict | None) -> ToolCalling:
    """Probe tool calling when the tokenizer has markers, mark the catalog entry, and record the outcome."""
    tool_calling = ToolCalling((), False, "no tool-call tokens in the tokenizer (pass --tool-markers START END)")
    if markers is not None:
        supports, detail = probe_tool_calling(f"{name}:{version}", cache, tool_probe or fine_tune_probe(source))
        if supports:
            _catalog_register(target, name, version, cache, markers, supports_tool_calling=True)
        tool_calling = ToolCalling((markers.start, markers.end), supports, detail)
    record = read_registration(target) or RegistrationRecord()
    write_registration(target, replace(record, tool_calling=ToolCallingRecord(
        tool_calling.markers, tool_calling.supports, tool_calling.detail)))
    return tool_calling


def register(onnx_dir: str | os.PathLike[str], name: str, *, version: int = 1,
             template: templates.Template | str = templates.Template.AUTO,
             custom_template: templates.PromptTemplate | None = None, model_config: ModelConfig | None = None,
             description: str = "", cache: str | Path | None = None, force: bool = False,
             tool_markers: tuple[str, str] | None = None, tool_probe: dict | None = None) -> Registration:
    """Register a converted model with Foundry Local as ``NAME:VERSION``.

    Re-registering the same source updates the folder and the registration in place;
    a name that holds another model is refused unless ``force``.

    Tool calling: the tokenizer's tool-call tokens (``tool_markers``, or a known pair such as
    ``<tool_call>``/``</tool_call>``) are published to the runtime (the catalog's
    ``tool_call_start``/``tool_call_end``, ``genai_config.json``'s ``bot_token_id``/``eot_token_id``),
    so it constrains and parses calls; ``supports_tool_calling`` is set only when a probe request
    (:func:`probe_tool_calling`, with ``tool_probe`` as its case, else a tool case of the dataset a
    fine-tune was trained on, else a generic one) gets the expected call.

    Raises:
        InvalidNameError: An unsafe name; raised before anything in the cache is changed, as are the others.
        ModelFolderError: A folder that is not a complete converted model.
        TemplateError: A malformed template, or one that cannot be derived.
        InvalidOptionError: An option out of range (a ``ModelConfig`` value, ``version``).
        RegistrationError: Foundry Local refused the registration (``NameTakenError``: the name holds
            another model and ``force`` is off).

    Example:
        >>> register("outputs/demo/models/int4", "smollm2-int4").model_id
        'smollm2-int4:1'
    """
    name = validate_name(name)
    if not isinstance(version, int) or version < 1:
        raise InvalidOptionError("version", version, "a whole number >= 1")
    source = Path(onnx_dir).expanduser().resolve()
    genai_config, context_length = _checked_config(source)
    model_config = (model_config or ModelConfig()).for_context(context_length)
    model_config.validate(context_length)
    resolved = template_resolve.resolve(template, source, custom_template)
    template_resolve.check_consistency(resolved)
    stop, markers = _publish_tokens(source, genai_config, resolved, tool_markers)
    root = models_root(cache)
    target = root / name
    record = _previous_record(target, source, name, force)
    artifacts.remove_stale(root)  # scratch of a registration that was killed
    staging = artifacts.staging_dir(target, "staging")
    try:
        with artifacts.disk_full_as_error(staging):
            _stage(source, staging, genai_config, resolved, model_config, name, version, description)
        threads, model_config = _staged_threads(staging, genai_config, model_config, context_length)
        write_registration(staging, _registration_record(source, name, version, resolved, stop, threads, model_config))
        _swap_in(staging, target, name, version, cache, markers, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tool_calling = _probe_tools(target, source, name, version, cache, markers, tool_probe)
    return Registration(name, version, f"{name}:{version}", target, str(resolved.choice), model_config,
                        (*resolved.notes, stop.note()), threads, stop, tool_calling)


def _tool_calling_words(tool_calling: ToolCalling | None) -> str:
    """The registration table's ``tool_calling`` cell."""
    if tool_calling is None or not tool_calling.markers:
        return "no markers"
    return f"{'supported' if tool_calling.supports else 'not supported (probe: no valid call)'}, markers " \
           f"{' '.join(tool_calling.markers)}"


def _catalog_register(path: Path, name: str, version: int, cache: str | Path | None,
                      markers: tools.Markers | None = None, *, supports_tool_calling: bool = False) -> None:
    artifacts.crash_point("register-catalog")
    model_id = f"{name}:{version}"
    try:
        catalog_register(path, model_id, name, cache, markers=markers,
                                 supports_tool_calling=supports_tool_calling)
    except Exception as exc:  # the SDK raises FoundryLocalException with the native message
        raise RegistrationError(f"Foundry Local refused {model_id}: {exc}") from exc


def register_all(convert_json: str | os.PathLike[str], prefix: str, *, template: str = "auto",
                 custom_template: templates.PromptTemplate | None = None, model_config: ModelConfig | None = None,
                 cache: str | Path | None = None, force: bool = False,
                 out_dir: str | os.PathLike[str] | None = None, tool_probe: dict | None = None,
                 progress: bool = False) -> list[RegisteredModel]:
    """Register every model listed in a ``convert.json`` as ``PREFIX-PRECISION``.

    Every name is checked before the first registration, so a bad prefix changes nothing.
    With ``out_dir``, the rows (thread probes included) are also written to ``out_dir/registered.json``.
    With ``progress``, a bar counts the models (each registration probes thread counts: seconds).

    Example:
        >>> [r.name for r in register_all("outputs/run/models/convert.json", "smollm2")]
        ['smollm2-fp32', 'smollm2-int4']
    """
    if not isinstance(artifacts.read_json(convert_json), list):
        raise ModelFolderError(convert_json, "not a convert.json (a list of manifests)", "Run the convert stage first.")
    manifests = read_conversions(convert_json)
    for manifest in manifests:
        validate_name(f"{prefix}-{manifest.precision}")
    rows = []
    bar = tqdm(manifests, desc="register", unit="model", disable=not progress)
    for manifest in bar:
        bar.set_postfix_str(f"{prefix}-{manifest.precision}")
        registration = register(manifest.output_dir, f"{prefix}-{manifest.precision}", template=template,
                                custom_template=custom_template, model_config=model_config, cache=cache, force=force,
                                tool_probe=tool_probe)
        choice = registration.threads
        rows.append(RegisteredModel(
            registration.name, registration.model_id, manifest.precision, registration.template,
            threads=registration.model_config.threads or "default", threads_speedup=choice.speedup if choice else None,
            threads_probe=choice.probe if choice else (), tool_calling=_tool_calling_words(registration.tool_calling),
            path=str(registration.path), notes=" ".join(registration.notes)))
    if out_dir is not None:
        write_registered(Path(out_dir) / "registered.json", rows)
    return rows
