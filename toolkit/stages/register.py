"""Stage 2: register a converted model with Foundry Local.

Lays the model out as the ``foundry`` CLI expects (``<cache>/models/custom/NAME/`` with
``inference_model.json``), makes the tokenizer's chat template match the chosen
``PromptTemplate`` (that is what the SDK's ChatSession reads), writes ``ModelConfig``
into ``genai_config.json``'s search defaults, and registers ``NAME:VERSION`` in Foundry
Local's local catalog. Everything is checked and staged before anything is replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from slmops.toolkit.core import artifacts, platform, settings
from slmops.toolkit.core.artifacts import dir_size_mb, read_manifest
from slmops.toolkit.core.errors import (
    InputError,
    InvalidNameError,
    InvalidOptionError,
    ModelFolderError,
    ModelNotFoundError,
    NameTakenError,
    RegistrationError,
)
from slmops.toolkit.core.measure import timestamp
from slmops.toolkit.domain import lm_head, options, templates, tools
from slmops.toolkit.domain.genai_config import config_problem, context_problem
from slmops.toolkit.domain.prompts import prompt_text
from slmops.toolkit.domain.results.registration import REGISTRATION_RECORD, registered_file
from slmops.toolkit.runtimes import foundry, genai
from slmops.toolkit.runtimes.foundry import models_root

INFERENCE_MODEL = "inference_model.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 64


AUTO_THREADS = "auto"
PROBE_PROMPT_TOKENS = 128  # the prompt of the thread probe (shorter on a model with a small context)


@dataclass(frozen=True)
class ThreadChoice:
    """What ``--threads auto`` measured and chose.

    Attributes:
        chosen: The thread count written to ``genai_config.json``.
        probe: ``{"threads", "decode_tps", "ttft_ms"}`` per count tried (0: the runtime's default).
        reused: The probe was measured earlier on the same compute graph on this machine (see
            :func:`choose_threads`) and read back rather than run again.
    """

    chosen: int
    probe: tuple[dict, ...]
    reused: bool = False

    @property
    def speedup(self) -> float:
        """Decode speed of the chosen count over the runtime's default (1.0 when the default was not probed)."""
        by_count = {row["threads"]: row["decode_tps"] for row in self.probe}
        return round(by_count[self.chosen] / by_count[0], 3) if by_count.get(0) else 1.0


def probe_counts(cpus: int | None = None) -> list[int]:
    """The thread counts ``--threads auto`` tries: the runtime's default (0), 1, powers of two, and every CPU.

    Example:
        >>> probe_counts(2), probe_counts(12)
        ([0, 1, 2], [0, 1, 2, 4, 8, 12])
    """
    cpus = cpus or os.cpu_count() or 1
    counts = [0, 1]
    while counts[-1] * 2 < cpus:
        counts.append(counts[-1] * 2)
    return sorted({*counts, cpus})


def pick_threads(probe: list[dict]) -> int:
    """The fastest decoding count of a probe (ties go to the shorter time to first token), never the default (0).

    An explicit count keeps the choice the same wherever the runtime's default would differ.

    Example:
        >>> pick_threads([{"threads": 0, "decode_tps": 181, "ttft_ms": 227},
        ...               {"threads": 1, "decode_tps": 180, "ttft_ms": 226},
        ...               {"threads": 2, "decode_tps": 238, "ttft_ms": 164}])
        2
    """
    explicit = [row for row in probe if row["threads"] > 0]
    return max(explicit, key=lambda row: (row["decode_tps"], -row["ttft_ms"]))["threads"]


def choose_threads(folder: Path, context_length: int) -> ThreadChoice:
    """Probe ``folder`` (a complete model folder) at each count of :func:`probe_counts` and pick one."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    length = max(8, min(PROBE_PROMPT_TOKENS, (context_length or 4 * PROBE_PROMPT_TOKENS) // 4))
    ids = tokenizer.encode(prompt_text(tokenizer, length), add_special_tokens=False).ids
    counts = probe_counts()
    # The fastest count depends on the compute graph and the machine, not on the weights' values: a
    # fine-tune and its base at one precision share a graph (model.onnx holds it; the weights sit in
    # model.onnx.data), so a probe is kept by the graph's hash and reused, which also keeps the choice
    # the same run to run.
    key = hashlib.sha256(json.dumps([
        hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(), len(ids), counts, platform.cpu_model(),
        os.cpu_count(), importlib.metadata.version("onnxruntime-genai")]).encode()).hexdigest()[:20]
    kept = settings.home() / "cache" / "threads" / f"{key}.json"
    if kept.is_file():
        probe = artifacts.read_json(kept, {}).get("probe") or []
        if probe:
            return ThreadChoice(pick_threads(probe), tuple(probe), reused=True)
    probe = [row.to_json() for row in genai.probe_threads(folder, ids, counts)]
    kept.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(kept, {"probe": probe})
    return ThreadChoice(pick_threads(probe), tuple(probe))


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
    """

    max_length: int | None = None
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = options.REPETITION_PENALTY
    threads: int | str | None = AUTO_THREADS

    def search_options(self) -> dict:
        """The generation defaults for ``search`` and ``inference_model.json`` (everything but ``threads``)."""
        options = asdict(self)
        del options["threads"]
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


#: The default probe (a tool_call case): a call any general model that can call tools makes. A
#: fine-tune taught its own functions is probed with one of its own cases (``tool_probe``).
PROBE_CASE = {"messages": [{"role": "user", "content": "What is the weather in Paris right now?"}],
              "tools": [{"type": "function", "function": {
                  "name": "get_weather", "description": "The current weather in a city.",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}}],
              "expect": {"call": {"name": "get_weather", "arguments": {}}}}
PROBE_MAX_TOKENS = 64


@dataclass(frozen=True)
class ToolCalling:
    """How tool calling was set up at registration.

    Attributes:
        markers: The tool-call boundaries published to the runtime (``[start, end]``; empty: none).
        supports: Whether ``supports_tool_calling`` was set: the probe got a valid call.
        detail: What the probe saw, in words.
    """

    markers: tuple[str, ...]
    supports: bool
    detail: str

    def as_json(self) -> dict:
        """The registration record's ``tool_calling`` entry."""
        return {"markers": list(self.markers), "supports_tool_calling": self.supports, "probe": self.detail}


def fine_tune_probe(onnx_dir: Path) -> dict | None:
    """A tool case from the dataset the model was fine-tuned on (its manifest's adapter, that adapter's
    ``finetune.json``), or None: a fine-tune taught its own functions is probed with one of them."""
    from slmops.toolkit.core.errors import InputError
    from slmops.toolkit.domain import datasets

    adapter = read_manifest(onnx_dir).get("adapter") or {}
    record = artifacts.read_json(Path(adapter.get("path", "")) / "finetune.json", {}) if adapter.get("path") else {}
    data = record.get("data") if isinstance(record, dict) else None
    if not data:
        return None
    try:
        return datasets.tool_probe(datasets.load_dataset(None if data == datasets.BUNDLED_DATASET else data))
    except InputError:
        return None


def probe_tool_calling(model_id: str, cache: str | Path | None, case: dict | None = None) -> tuple[bool, str]:
    """Ask the registered model a tool case (``tool_choice: auto``, greedy): True when it made the expected call.

    The runtime constrains a call once the model opens one; a model that never learned the
    markers answers in text (or runs out of tokens), and is not marked as able to call tools.

    Args:
        model_id: The registration to ask.
        cache: Foundry cache.
        case: ``{"messages", "tools", "expect": {"call": {"name", "arguments"}}}`` (default :data:`PROBE_CASE`).
    """
    from slmops.toolkit.core.errors import SlmopsError

    case = case or PROBE_CASE
    try:
        with foundry.LoadedModel(model_id, cache) as model:
            answer = model.generate(case["messages"], max_tokens=PROBE_MAX_TOKENS, tool_defs=case["tools"],
                                    tool_choice="auto")
    except SlmopsError as exc:
        return False, f"no call: {str(exc)[-200:]}"
    check = tools.check_call(list(answer.tool_calls), case["tools"], case["expect"]["call"])
    if check.passed:
        return True, f"called {answer.tool_calls[0]['function']['name']}({answer.tool_calls[0]['function']['arguments']})"
    return False, f"no valid call ({'; '.join(check.problems)}); answered {answer.text[:80]!r}"


@dataclass(frozen=True)
class StopTokens:
    """The token ids that end generation, reconciled at registration.

    Attributes:
        eos_token_id: ``genai_config.json``'s ``model.eos_token_id`` as registered.
        before: What the converted model had.
        added: ``{"id", "token", "from"}`` per id added: the chat template's end of turn, or
            ``generation_config.json``'s EOS list.
        generation_config: The ``generation_config.json`` read ('' when none was found).
    """

    eos_token_id: tuple[int, ...]
    before: tuple[int, ...]
    added: tuple[dict, ...]
    generation_config: str = ""

    def note(self) -> str:
        """One line for the CLI: what was added, or that nothing was needed."""
        if not self.added:
            return f"Stop tokens: eos_token_id {list(self.eos_token_id)} already holds the end of turn; nothing added."
        what = ", ".join(f"{row['token']} ({row['id']}, {row['from']})" for row in self.added)
        return (f"Stop tokens: added {what} to genai_config.json's eos_token_id: {list(self.before)} -> "
                f"{list(self.eos_token_id)}.")

    def as_json(self) -> dict:
        """The registration record's ``stop_tokens``."""
        return {"eos_token_id": list(self.eos_token_id), "before": list(self.before), "added": list(self.added),
                "generation_config": self.generation_config}


def _ids(value: object) -> list[int]:
    """An ``eos_token_id`` (an int, a list of them, or missing) as a list."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, list) else []


def reconcile_stop_tokens(onnx_dir: Path, genai_config: dict, template: templates.PromptTemplate) -> StopTokens:
    """The EOS ids generation must stop on: the converted model's, the template's end of turn, generation_config's.

    A model fine-tuned on ChatML often keeps ``<|endoftext|>`` as its only EOS while every turn it
    learned ends in ``<|im_end|>`` (Gemma: ``<eos>`` and ``<end_of_turn>``); without the end-of-turn
    id, generation runs to max tokens. ``generation_config.json`` is read from the converted folder,
    else from the folder it was converted from (``manifest.json``'s ``source_path``).

    Raises:
        InputError: a stop token is past the model's vocabulary (its tokenizer grew, the model was never resized).
    """
    before = _ids(genai_config["model"].get("eos_token_id"))
    found: list[tuple[int, str, str]] = []
    tokenizer_file = onnx_dir / "tokenizer.json"
    if tokenizer_file.is_file():
        found += [(i, tok, "the chat template's end of turn")
                  for i, tok in templates.end_of_turn_tokens(template, tokenizer_file)]
    source = read_manifest(onnx_dir).get("source_path")
    generation_file = next((f for f in (onnx_dir / "generation_config.json",
                                        Path(source) / "generation_config.json" if source else None)
                            if f is not None and f.is_file()), None)
    if generation_file is not None:
        config = artifacts.read_json(generation_file, {})
        found += [(i, _token_text(tokenizer_file, i), "generation_config.json")
                  for i in _ids(config.get("eos_token_id") if isinstance(config, dict) else None)]
    vocab = genai_config["model"].get("vocab_size")
    outside = [(i, tok, origin) for i, tok, origin in found if isinstance(vocab, int) and i >= vocab]
    if outside:
        token_id, token, origin = outside[0]
        raise InputError(vocabulary_gap(onnx_dir, token, token_id, vocab, origin))
    eos = list(before)
    added = []
    for token_id, token, origin in found:
        if token_id not in eos:
            eos.append(token_id)
            added.append({"id": token_id, "token": token, "from": origin})
    return StopTokens(tuple(eos), tuple(before), tuple(added), str(generation_file or ""))


def vocabulary_gap(folder: Path, token: str, token_id: int, vocab: int, origin: str) -> str:
    """The one-line refusal of a stop token the model has no row for (its tokenizer grew, the model did not)."""
    return (f"{folder}: {token} ({origin}) is token {token_id}, past the model's {vocab}-token vocabulary: the "
            "tokenizer holds tokens the model was never resized for, so no answer could end there. Resize the model "
            "(model.resize_token_embeddings(len(tokenizer))), train or save it again and convert it again.")


def _token_text(tokenizer_file: Path, token_id: int) -> str:
    if not tokenizer_file.is_file():
        return str(token_id)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_file)).id_to_token(token_id) or str(token_id)


def validate_name(name: str) -> str:
    """Return ``name`` if it is safe as a folder and model id, else raise.

    Raises:
        InvalidNameError: path separators, ``..``, whitespace, ``:``, or too long.

    Example:
        >>> validate_name("smollm2-int4")
        'smollm2-int4'
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("The model name is empty; pass --name NAME (letters, digits, '.', '_', '-').")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"The model name is {len(name)} characters; use at most {MAX_NAME}.")
    # fullmatch, not match: "$" would accept a name ending in a newline.
    if ".." in name or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"The model name {name!r} is not safe: use letters, digits, '.', '_' and '-' only "
            "(no path separators, '..', whitespace or ':'), starting with a letter or digit."
        )
    return name


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
    eos = _ids(genai_config["model"].get("eos_token_id"))
    if eos:
        genai_config["model"]["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    options = {k: v for k, v in decoder.get("session_options", {}).items() if k != "intra_op_num_threads"}
    if type(threads) is int:
        options["intra_op_num_threads"] = threads
    decoder["session_options"] = options
    (folder / "genai_config.json").write_text(json.dumps(genai_config, indent=4))


def _stage(onnx_dir: Path, staging: Path, genai_config: dict, resolved: templates.ResolvedTemplate,
           model_config: ModelConfig, name: str, version: int, description: str) -> None:
    rewritten = {"genai_config.json", "tokenizer_config.json", "chat_template.jinja", INFERENCE_MODEL, REGISTRATION_RECORD}
    for item in onnx_dir.iterdir():
        if item.is_file() and item.name not in rewritten:
            _link_or_copy(item, staging / item.name)
    # Served prefill computes the LM head on the last position only; the full graph stays beside it.
    lm_head.serve_last_position(staging, genai_config["model"]["decoder"].get("filename", "model.onnx"))
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


def register(
    onnx_dir: str | os.PathLike[str],
    name: str,
    *,
    version: int = 1,
    template: templates.Template | str = templates.Template.AUTO,
    custom_template: templates.PromptTemplate | None = None,
    model_config: ModelConfig | None = None,
    description: str = "",
    cache: str | Path | None = None,
    force: bool = False,
    tool_markers: tuple[str, str] | None = None,
    tool_probe: dict | None = None,
) -> Registration:
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
    genai_config = _check_onnx_dir(source)
    problem = context_problem(source, genai_config)
    if problem:
        raise ModelFolderError(source, problem, "Nothing was registered.")
    context_length = int(genai_config["model"].get("context_length", 0))
    model_config = (model_config or ModelConfig()).for_context(context_length)
    model_config.validate(context_length)
    resolved = templates.resolve(template, source, custom_template)
    templates.check_consistency(resolved)
    stop = reconcile_stop_tokens(source, genai_config, resolved.prompt_template)
    genai_config["model"]["eos_token_id"] = list(stop.eos_token_id)
    markers = tools.find_markers(source, *(tool_markers or (None, None)))
    for key in ("bot_token_id", "eot_token_id"):
        genai_config["model"].pop(key, None)
    if markers is not None:
        genai_config["model"]["bot_token_id"], genai_config["model"]["eot_token_id"] = markers.start_id, markers.end_id
    root = models_root(cache)
    target = root / name
    record = _read_record(target)
    if record and record.get("source") != str(source) and not force:
        raise NameTakenError(
            f"The name {name!r} is already registered to another model ({record.get('source')}). "
            "Choose another --name, or pass --force to replace it."
        )
    artifacts.remove_stale(root)  # scratch of a registration that was killed
    staging = artifacts.staging_dir(target, "staging")
    try:
        with artifacts.disk_full_as_error(staging):
            _stage(source, staging, genai_config, resolved, model_config, name, version, description)
        threads = None
        if model_config.threads == AUTO_THREADS:  # measured on the staged folder, before anything is replaced
            threads = choose_threads(staging, context_length)
            model_config = replace(model_config, threads=threads.chosen)
            _write_genai_config(staging, genai_config, threads.chosen)
        artifacts.write_json(staging / REGISTRATION_RECORD, {
            "source": str(source), "name": name, "version": version, "template": str(resolved.choice),
            "notes": list(resolved.notes), "registered": timestamp(), "stop_tokens": stop.as_json(),
            "threads": {"setting": "auto", "chosen": threads.chosen, "speedup_vs_default": threads.speedup,
                        "probe": list(threads.probe), "reused_probe": threads.reused}
            if threads else {"setting": model_config.threads},
        })
        try:
            artifacts.swap_into_place(staging, target,
                                      then=lambda: _catalog_register(target, name, version, cache, markers))
        except BaseException:
            if record.get("version"):  # the previous folder is back: put its registration back as it was
                with contextlib.suppress(Exception):  # the original error is the one to report
                    _catalog_register(target, name, int(record["version"]), cache,
                                      tools.registered_markers(target),
                                      supports_tool_calling=bool(record.get("tool_calling", {}).get(
                                          "supports_tool_calling")))
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tool_calling = ToolCalling((), False, "no tool-call tokens in the tokenizer (pass --tool-markers START END)")
    if markers is not None:
        supports, detail = probe_tool_calling(f"{name}:{version}", cache, tool_probe or fine_tune_probe(source))
        if supports:
            _catalog_register(target, name, version, cache, markers, supports_tool_calling=True)
        tool_calling = ToolCalling((markers.start, markers.end), supports, detail)
    record = _read_record(target)
    artifacts.write_json(target / REGISTRATION_RECORD, {**record, "tool_calling": tool_calling.as_json()})
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
        foundry.catalog_register(path, model_id, name, cache, markers=markers,
                                 supports_tool_calling=supports_tool_calling)
    except Exception as exc:  # the SDK raises FoundryLocalException with the native message
        raise RegistrationError(f"Foundry Local refused {model_id}: {exc}") from exc


def _read_record(folder: Path) -> dict:
    file = folder / REGISTRATION_RECORD
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def unregister(name: str, *, cache: str | Path | None = None, remove_files: bool = True) -> None:
    """Unregister every version of ``name`` and (by default) delete its cache folder.

    Raises:
        ModelNotFoundError: nothing of that name is registered.
    """
    validate_name(name)
    catalog = foundry.local_catalog(cache)
    ids = [m.id for m in catalog.list_models() if m.id.split(":")[0] == name]
    folder = models_root(cache) / name
    if not ids and not folder.exists():
        raise ModelNotFoundError(name, [row["name"] for row in list_models(cache)])
    for model_id in ids:
        catalog.unregister_model(model_id)
    if remove_files and folder.exists():
        shutil.rmtree(folder)


def list_models(cache: str | Path | None = None) -> list[dict]:
    """What Foundry Local has: the ``models/custom`` folders and the SDK's local catalog.

    Returns:
        One row per model: ``name``, ``model_id``, ``registered`` (in the catalog),
        ``folder`` (has the Foundry layout), ``precision``, ``method``, ``size_mb``, ``path``.
    """
    rows: dict[str, dict] = {}
    catalog = foundry.local_catalog(cache)  # opening the cache first recovers what a killed process left
    root = models_root(cache)
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            info_file = folder / INFERENCE_MODEL
            info = artifacts.read_json(info_file, {})
            manifest = read_manifest(folder)
            rows[folder.name] = {
                "name": folder.name, "model_id": f"{folder.name}:{info.get('Version', '?')}",
                "registered": False, "folder": info_file.is_file(),
                "precision": manifest.get("precision", "?"), "method": manifest.get("method", "?"),
                "size_mb": round(dir_size_mb(folder), 1), "path": str(folder),
            }
    for model in catalog.list_models():
        name = model.id.split(":")[0]
        row = rows.setdefault(name, {
            "name": name, "model_id": model.id, "registered": True, "folder": False,
            "precision": "?", "method": "?", "size_mb": None, "path": "",
        })
        row["registered"] = True
        row["model_id"] = model.id
    return sorted(rows.values(), key=lambda row: row["name"])


def register_all(convert_json: str | os.PathLike[str], prefix: str, *, template: str = "auto",
                 custom_template: templates.PromptTemplate | None = None, model_config: ModelConfig | None = None,
                 cache: str | Path | None = None, force: bool = False,
                 out_dir: str | os.PathLike[str] | None = None, tool_probe: dict | None = None,
                 progress: bool = False) -> list[dict]:
    """Register every model listed in a ``convert.json`` as ``PREFIX-PRECISION``.

    Every name is checked before the first registration, so a bad prefix changes nothing.
    With ``out_dir``, the rows (thread probes included) are also written to ``out_dir/registered.json``.
    With ``progress``, a bar counts the models (each registration probes thread counts: seconds).

    Example:
        >>> [r["name"] for r in register_all("outputs/run/models/convert.json", "smollm2")]
        ['smollm2-fp32', 'smollm2-int4']
    """
    manifests = artifacts.read_json(convert_json)
    if not isinstance(manifests, list):
        raise ModelFolderError(convert_json, "not a convert.json (a list of manifests)", "Run the convert stage first.")
    for manifest in manifests:
        validate_name(f"{prefix}-{manifest['precision']}")
    rows = []
    bar = tqdm(manifests, desc="register", unit="model", disable=not progress)
    for manifest in bar:
        bar.set_postfix_str(f"{prefix}-{manifest['precision']}")
        registration = register(manifest["output_dir"], f"{prefix}-{manifest['precision']}", template=template,
                                custom_template=custom_template, model_config=model_config, cache=cache, force=force,
                                tool_probe=tool_probe)
        choice = registration.threads
        rows.append({"name": registration.name, "model_id": registration.model_id,
                     "precision": manifest["precision"], "template": registration.template,
                     "threads": registration.model_config.threads or "default",
                     "threads_speedup": choice.speedup if choice else None,
                     "threads_probe": list(choice.probe) if choice else [],
                     "tool_calling": _tool_calling_words(registration.tool_calling),
                     "path": str(registration.path), "notes": " ".join(registration.notes)})
    if out_dir is not None:
        artifacts.write_json(Path(out_dir) / "registered.json", registered_file(rows))
    return rows
