"""``slmops doctor``: check a model folder for what Foundry Local needs, with the fix.

Its runtime check registers the folder in a throwaway cache and loads it, so it composes
the register stage with the Foundry Local runtime.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, settings
from slmops.toolkit.core.codec import RecordError
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.domain import jinja_render, template_resolve, templates
from slmops.toolkit.domain.genai_config import config_problem
from slmops.toolkit.domain.results.conversion import read_manifest
from slmops.toolkit.domain.verdicts import TOP1_TARGET, Status, status_at_least
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_web import probe_web_service
from slmops.toolkit.stages.register import ModelConfig, register
from slmops.toolkit.stages.register_stop import vocabulary_gap
from slmops.toolkit.weights.context_limit import context_problem
from slmops.toolkit.weights.turn_tokens import end_of_turn_tokens


@dataclass(frozen=True)
class Check:
    """One doctor check: its name, its :class:`Status` against the target its detail states, and what to do.

    A warning is short of its target yet usable (the command still succeeds); a failure is not.
    """

    name: str
    status: Status
    detail: str

    @property
    def ok(self) -> bool:
        """Usable: passed or only warned."""
        return self.status is not Status.FAIL


def status_of(passed: bool) -> Status:
    """Pass or fail, for a check that has no middle ground."""
    return Status.PASS if passed else Status.FAIL




def _external_data_complete(model_file: Path) -> tuple[bool, str]:
    """Every external tensor of ``model_file`` lies inside its data file (catches truncated copies)."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (any parse failure means the file is damaged)
        return False, f"{model_file.name} cannot be parsed ({type(exc).__name__}); convert it again"
    needed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        needed[info["location"]] = max(needed.get(info["location"], 0), end)
    for location, end in needed.items():
        data = model_file.parent / location
        size = data.stat().st_size if data.is_file() else -1
        if size < end:
            return False, (f"{location} is {'missing' if size < 0 else f'{size:,} bytes'} but the graph reads up to "
                           f"byte {end:,}: a truncated copy; copy or convert it again")
    return True, f"{model_file.name} and {', '.join(needed) or 'no external data'} complete"


def _own_folder(folder: Path) -> tuple[bool, str]:
    nested = [p.parent.relative_to(folder) for p in folder.rglob("genai_config.json") if p.parent != folder]
    if nested:
        return False, (f"other models inside it ({', '.join(map(str, nested[:3]))}); Foundry Local wants one model "
                       "per folder: move them out")
    if folder.parent.name == "custom" and folder.parent.parent.name == "models":
        return True, f"in the Foundry cache layout models/custom/{folder.name}/"
    return True, "one model in this folder (`slmops register` places it in models/custom/NAME/)"


def stop_check(folder: Path, config: dict) -> Check:
    """Whether the token the chat template ends an answer with is one generation stops on (``eos_token_id``).

    A model fine-tuned on ChatML that kept ``<|endoftext|>`` as its EOS (or a Gemma with ``<eos>``
    while turns end in ``<end_of_turn>``) answers and then runs on to max tokens.
    """
    eos = config["model"].get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    try:
        bos, eos_text = template_resolve.special_tokens(folder)
        end = template_resolve.rendered_turn_end(template_resolve.read_chat_template(folder, runtime=True), bos_token=bos,
                                          eos_token=eos_text)
    except SlmopsError as exc:
        return Check("stop tokens", Status.FAIL, f"{exc}; register with --template")
    if not (folder / "tokenizer.json").is_file():
        return Check("stop tokens", Status.FAIL, "tokenizer.json missing; convert it again")
    tokens = end_of_turn_tokens(end, folder / "tokenizer.json")
    if not tokens:
        return Check("stop tokens", Status.FAIL, f"the chat template ends a turn with {end!r}, which is no single token, "
                     "so nothing stops generation there: register a preset whose turns end in a special token "
                     "(`slmops register --template ...`)")
    (token_id, token), = tokens
    vocab = config["model"].get("vocab_size")
    if isinstance(vocab, int) and token_id >= vocab:
        return Check("stop tokens", Status.FAIL, vocabulary_gap(folder, token, token_id, vocab,
                                                          "the chat template's end of turn"))
    if token_id not in eos:
        return Check("stop tokens", Status.FAIL, f"{token} ({token_id}) ends every turn of the chat template but "
                     f"genai_config.json's eos_token_id is {eos}: answers run to max tokens; register it with "
                     f"`slmops register` (it adds {token_id}) or add {token_id} to eos_token_id")
    return Check("stop tokens", Status.PASS, f"{token} ({token_id}) ends the template's turns and stops generation "
                 f"(eos_token_id {eos})")


def runtime_check(folder: Path) -> list[Check]:
    """Load ``folder`` with the installed Foundry Local runtime and generate one token; ask its web service for it.

    The model is registered into a throwaway cache (files hard-linked, nothing copied),
    so the folder and the real cache are not touched.
    """
    import importlib.metadata

    version = importlib.metadata.version("foundry-local-sdk")
    with tempfile.TemporaryDirectory(prefix="slmops-doctor-") as cache:
        info_file = folder / "inference_model.json"
        custom = None
        if info_file.is_file():  # keep a registered model's own strings
            folded = codec.load(templates.PromptTemplate, json.loads(info_file.read_text())["PromptTemplate"],
                                kind=f"PromptTemplate of {info_file}")
            custom = folded.unfolded(template_resolve.special_tokens(folder)[0])
        try:
            register(folder, "doctor-probe", template="custom" if custom else "auto", custom_template=custom,
                     model_config=ModelConfig(threads=None), cache=cache)  # loading it is the check, not tuning
        except SlmopsError as exc:
            return [Check("runtime load", Status.FAIL, f"cannot be registered for the check: {exc}")]
        try:
            with LoadedModel("doctor-probe", cache) as model:
                generation = model.generate([{"role": "user", "content": "Hello"}], max_tokens=1)
        except Exception as exc:  # noqa: BLE001 (the runtime's own error, or ours wrapping it, is the finding)
            return [Check("runtime load", Status.FAIL, f"foundry-local-sdk {version} cannot load or run it: "
                          f"{type(exc).__name__}: {exc}; convert it again with this toolkit's pinned versions")]
        # Not a failure either way: `slmops serve` uses the runtime's own service where it can, else its own.
        probe = probe_web_service("doctor-probe", cache, record_dir=settings.cache_dir())
    return [Check("runtime load", Status.PASS, f"foundry-local-sdk {version} loads it and generated "
                  f"{generation.completion_tokens} token from a {generation.prompt_tokens}-token prompt"),
            Check("web service", Status.PASS if probe.serves else Status.WARN,
                  probe.detail + ("" if probe.serves else "; `slmops serve` answers with its own endpoint instead"))]


def parity_check(folder: Path) -> Check:
    """Whether the build computes what its source computes, from the conversion's parity record in ``manifest.json``.

    A folder this toolkit did not convert has no record: reported, not failed (convert it here to check it).
    """
    try:
        made = read_manifest(folder)
    except RecordError as exc:
        return Check("parity", Status.FAIL, f"unreadable parity record ({exc}); convert it again")
    if made is None or made.parity is None:
        return Check("parity", Status.WARN, "not checked: no parity record in manifest.json (not converted by this "
                     "toolkit); `slmops convert` checks every build against its source in transformers")
    gate = made.parity
    if not gate.checks:
        return Check("parity", Status.WARN, f"not checked: {gate.reason or 'no check recorded'}")
    checks = gate.checks
    lines = [f"{check.build} {check.in_words()}" for check in checks]
    lowest = min([1.0, *(check.figures.top1_agreement for check in checks)])
    if not gate.passed:
        return Check("parity", Status.FAIL, "; ".join(lines) + "; convert it again")
    status = status_at_least(lowest, TOP1_TARGET, floor=0.0)
    target = f"target: top-1 agreement >= {TOP1_TARGET} with the source"
    return Check("parity", status, "; ".join(lines) + (f" ({target})" if status is Status.PASS else
                 f": below the {target}, inside the parity gate; compare INT4 recipes (`slmops recipes`) or "
                 "use int8"))


def _config_or_failure(folder: Path) -> dict | Check:
    """The folder's ``genai_config.json`` when present and valid, else the one check that fails it."""
    if not folder.is_dir():
        return Check("folder", Status.FAIL, f"{folder} does not exist; check the path (`slmops ls` shows registered ones)")
    config_file = folder / "genai_config.json"
    if not config_file.is_file():
        return Check("genai_config.json", Status.FAIL, f"missing in {folder}; convert with `slmops convert`")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Check("genai_config.json", Status.FAIL, f"not a valid genai config ({exc}); re-run the conversion")
    problem = config_problem(config)
    if problem:
        return Check("genai_config.json", Status.FAIL, f"{problem}; re-run the conversion")
    return config


def _file_checks(folder: Path, config: dict) -> list[Check]:
    """The folder is its own (no links out, nothing shared) and holds every model file the config names."""
    ok, detail = _own_folder(folder)
    checks = [Check("own folder", status_of(ok), detail)]
    leaving = artifacts.links_leaving(folder)
    checks.append(Check("links", status_of(not leaving), "none leads outside the folder" if not leaving else
                        f"{', '.join(str(p.relative_to(folder)) for p in leaving[:3])} lead outside it: copy the real "
                        "files in (e.g. `cp -rL`); a link is never followed into Foundry Local's cache"))
    filename = config["model"].get("decoder", {}).get("filename", "model.onnx")
    model_file = folder / filename
    if model_file.is_file():
        ok, detail = _external_data_complete(model_file)
    else:
        ok, detail = False, f"{filename} missing; re-run the conversion"
    checks.append(Check("model files", status_of(ok), detail))
    return checks


def _template_checks(folder: Path, config: dict) -> list[Check]:
    """The chat template the runtime reads is non-empty and renders a conversation; then its stop tokens."""
    try:
        jinja = template_resolve.read_chat_template(folder, runtime=True)
        if jinja.strip():  # rendered once, within the limits every rendering has (a runaway template fails here)
            bos, eos = template_resolve.special_tokens(folder)
            jinja_render.render_jinja(jinja, template_resolve.PROBE[1:2], bos_token=bos, eos_token=eos)
        checks = [Check("chat template", status_of(bool(jinja.strip())), "non-empty, renders a conversation"
                        if jinja.strip()
                        else "empty: ChatSession fails with 'Empty chat template'; register with --template")]
        if jinja.strip():
            checks.append(stop_check(folder, config))
        return checks
    except InputError as exc:
        return [Check("chat template", Status.FAIL, f"{exc} Re-register with `slmops register`.")]


def _registration_checks(folder: Path, context: int) -> tuple[list[Check], bool]:
    """``inference_model.json``'s prompt template and max length; False when the file cannot be read at all."""
    try:
        info = artifacts.read_json(folder / "inference_model.json")
    except InputError as exc:
        return [Check("inference_model.json", Status.FAIL, f"{exc} Re-register with `slmops register`.")], False
    if info is None:
        return [Check("inference_model.json", Status.PASS, "not registered yet (the foundry CLI lists a model once "
                      "`slmops register` writes it)")], True
    if not isinstance(info, dict):
        return [Check("inference_model.json", Status.FAIL, "not a JSON object; re-register with `slmops register`")], True
    checks = []
    try:
        templates.PromptTemplate(**info["PromptTemplate"]).validate()
        checks.append(Check("PromptTemplate", Status.PASS, "every field has one {Content} and no other placeholder"))
    except (TypeError, KeyError, SlmopsError) as exc:
        checks.append(Check("PromptTemplate", Status.FAIL, f"{exc}; re-register with `slmops register`"))
    max_length = (info.get("ModelConfig") or {}).get("max_length", 0)
    ok = type(max_length) is int and 0 < max_length <= (context or max_length)
    checks.append(Check("max_length", status_of(ok), f"{max_length} within context {context}" if ok
                        else f"{max_length} exceeds the model's context {context}; lower --max-length"))
    return checks, True


def diagnose(folder: Path, *, load: bool = True) -> list[Check]:
    """Run every check on ``folder`` (an ONNX model, or a registered ``models/custom/NAME``).

    Args:
        folder: The model folder.
        load: Also load it with the installed Foundry Local runtime (a few seconds).
    """
    folder = Path(folder).expanduser().resolve()
    config = _config_or_failure(folder)
    if isinstance(config, Check):
        return [config]
    problem = context_problem(folder, config)
    context = 0 if problem else int(config["model"].get("context_length") or 0)
    checks = [Check("genai_config.json", Status.PASS, f"present, valid, context {context} tokens"),
              Check("context length", status_of(not problem), problem or "within the positions the model was built for")]
    checks += _file_checks(folder, config)
    checks.append(parity_check(folder))
    checks += _template_checks(folder, config)
    registration, readable = _registration_checks(folder, context)
    checks += registration
    if not readable:
        return checks
    if load and all(c.ok for c in checks):
        checks += runtime_check(folder)
    return checks
