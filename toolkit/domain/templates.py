"""Prompt templates: one choice that both Foundry Local runtimes obey.

The ``foundry`` CLI reads four ``PromptTemplate`` strings from ``inference_model.json``;
the SDK's ``ChatSession`` reads the tokenizer's Jinja chat template. A
:class:`PromptTemplate` is turned into a Jinja template (:func:`to_jinja`) that renders
exactly what :func:`render` makes from the four strings, and ``auto`` derives the four
strings from a model's own Jinja template by rendering probe conversations.

Rendering rule for the four strings: every message but the last is its role's string
with ``{Content}`` replaced; a final user message uses ``prompt`` (user turn plus the
start of the assistant's answer). Strings are concatenated with nothing in between. A
family that writes a BOS token (Llama 3, Gemma, Mistral) has it once, before the first
message (:attr:`PromptTemplate.bos`): measured on foundry-local-sdk 2.2.1, the runtime
encodes the rendered prompt without adding special tokens, even when ``tokenizer.json``'s
post-processor would add BOS, so the template must write it, as transformers' does.

Models' own Jinja templates are rendered as transformers 5 renders them (:func:`render_jinja`):
the same sandbox settings, globals (``raise_exception``, ``strftime_now``, ``namespace``,
``dict``), the ``tojson`` filter, loop controls and the ``{% generation %}`` tag. Foundry
Local's runtime renders all of them too (checked on 2.2.1), so ``auto`` keeps the model's own.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import TemplateError

PLACEHOLDER = "{Content}"
_FIELDS = ("system", "user", "assistant", "prompt")


class Template(StrEnum):
    """Template presets; ``auto`` derives from the model, ``custom`` takes your strings."""

    AUTO = "auto"
    CHATML = "chatml"
    QWEN = "qwen"
    SMOLLM = "smollm"
    PHI3 = "phi3"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    GEMMA = "gemma"
    CUSTOM = "custom"


@dataclass(frozen=True)
class PromptTemplate:
    """The four ``inference_model.json`` strings, each with one ``{Content}``.

    Attributes:
        system: A system turn.
        user: A user turn (all but a final one).
        assistant: An assistant turn, ending with the end-of-turn marker.
        prompt: A final user turn plus the start of the answer.
        bos: The BOS token the family writes once before the first message ('' for none).
    """

    system: str
    user: str
    assistant: str
    prompt: str
    bos: str = ""

    def validate(self) -> None:
        """Raise :class:`TemplateError` unless every field has exactly one ``{Content}``
        and no other ``{placeholder}``."""
        for name in _FIELDS:
            value = getattr(self, name)
            if value.count(PLACEHOLDER) != 1:
                raise TemplateError(
                    f"PromptTemplate.{name} must contain {PLACEHOLDER} exactly once; got {value!r}."
                )
            unknown = set(re.findall(r"\{[A-Za-z_][A-Za-z0-9_]*\}", value)) - {PLACEHOLDER}
            if unknown:
                raise TemplateError(
                    f"PromptTemplate.{name} has unknown placeholder(s) {sorted(unknown)}; only {PLACEHOLDER} is filled in."
                )

    def as_json(self) -> dict[str, str]:
        """The ``PromptTemplate`` object of ``inference_model.json``.

        Four strings cannot write a token once per conversation: a BOS goes at the start of
        ``system`` and ``prompt``, the first string of a conversation with and without a
        system message (the Jinja written beside it writes BOS exactly once).
        """
        fields = {name: getattr(self, name) for name in _FIELDS}
        for name in ("system", "prompt"):
            fields[name] = self.bos + fields[name]
        return fields

    @property
    def turn_end(self) -> str:
        """What follows an assistant turn's content: the end-of-turn marker (e.g. ``<|im_end|>\\n``)."""
        return self.assistant.split(PLACEHOLDER, 1)[1]

    @classmethod
    def from_json(cls, data: dict, bos_token: str = "") -> PromptTemplate:
        """Read ``inference_model.json``'s four strings back, taking a BOS that :meth:`as_json` folded in out again.

        Raises:
            TypeError: not the four string fields.
        """
        template = cls(**{name: data[name] for name in _FIELDS}) if set(data) >= set(_FIELDS) else cls(**data)
        if bos_token and template.system.startswith(bos_token) and template.prompt.startswith(bos_token):
            template = replace(template, system=template.system[len(bos_token):],
                               prompt=template.prompt[len(bos_token):], bos=bos_token)
        return template


def load_prompt_template(path: str | Path) -> PromptTemplate:
    """Read the four strings from a JSON file (``{"system": ..., "user": ..., "assistant": ..., "prompt": ...}``).

    Raises:
        TemplateError: unreadable, not JSON, missing or extra keys, or malformed strings.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise TemplateError(f"Cannot read the template file {path}: {exc}.") from exc
    if not isinstance(data, dict) or set(data) != set(_FIELDS) or not all(isinstance(v, str) for v in data.values()):
        raise TemplateError(f"{path} must be a JSON object with exactly the string keys {list(_FIELDS)}.")
    template = PromptTemplate(**data)
    template.validate()
    return template


def _preset(system: str, user: str, assistant: str, end: str, bos: str = "") -> PromptTemplate:
    return PromptTemplate(
        system=system + PLACEHOLDER + end,
        user=user + PLACEHOLDER + end,
        assistant=assistant + PLACEHOLDER + end,
        prompt=user + PLACEHOLDER + end + assistant,
        bos=bos,
    )


_CHATML = _preset("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n")

#: Presets, exact to each family's published chat template for system/user/assistant turns.
#: Qwen and SmolLM use ChatML (the tutorial's template); their own Jinja adds a default
#: system prompt when none is given, which four strings cannot express. Mistral is the
#: v7 format with a real system turn (Mistral Small 3 and later; older Mistral templates
#: fold the system prompt into the first user turn, which four strings cannot express).
#: Llama 3, Mistral and Gemma carry the BOS their tokenizers' templates write.
PRESETS: dict[Template, PromptTemplate] = {
    Template.CHATML: _CHATML,
    Template.QWEN: _CHATML,
    Template.SMOLLM: _CHATML,
    Template.PHI3: _preset("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>\n"),
    Template.LLAMA3: _preset(
        "<|start_header_id|>system<|end_header_id|>\n\n", "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>", "<|begin_of_text|>",
    ),
    Template.MISTRAL: PromptTemplate(
        system="[SYSTEM_PROMPT]" + PLACEHOLDER + "[/SYSTEM_PROMPT]", user="[INST]" + PLACEHOLDER + "[/INST]",
        assistant=PLACEHOLDER + "</s>", prompt="[INST]" + PLACEHOLDER + "[/INST]", bos="<s>",
    ),
    Template.GEMMA: _preset("<start_of_turn>user\n", "<start_of_turn>user\n", "<start_of_turn>model\n",
                            "<end_of_turn>\n", "<bos>"),
}

#: Markers that identify a family's template, to name the preset that fits a template four strings cannot express.
_MARKERS: tuple[tuple[Template, str], ...] = (
    (Template.GEMMA, "<start_of_turn>"), (Template.LLAMA3, "<|start_header_id|>"), (Template.PHI3, "<|user|>"),
    (Template.MISTRAL, "[INST]"), (Template.CHATML, "<|im_start|>"),
)


def matching_preset(jinja_template: str) -> Template | None:
    """The preset whose turn markers the template writes, if any.

    Example:
        >>> matching_preset("{{ '<start_of_turn>user\\n' + message['content'] }}")
        <Template.GEMMA: 'gemma'>
    """
    return next((preset for preset, marker in _MARKERS if marker in (jinja_template or "")), None)


def _fix(jinja_template: str) -> str:
    """The fix a refusal names: the preset whose markers match, else custom strings."""
    preset = matching_preset(jinja_template)
    if preset is None:
        return "write the four strings with --template custom (or --template-file)"
    return f"register with --template {preset} (its markers match this template) or --template custom"

#: One line per preset, for pickers and ``--help``.
TEMPLATE_NOTES: dict[Template, str] = {
    Template.AUTO: "derived from the model's own chat template",
    Template.CHATML: "ChatML, the tutorial's (<|im_start|>role ... <|im_end|>)",
    Template.QWEN: "Qwen 1.5/2/2.5/3: ChatML",
    Template.SMOLLM: "SmolLM/SmolLM2: ChatML",
    Template.PHI3: "Phi-3/3.5 (<|user|> ... <|end|>)",
    Template.LLAMA3: "Llama 3.x (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>)",
    Template.MISTRAL: "Mistral v7 ([SYSTEM_PROMPT] ... [INST] ... [/INST])",
    Template.GEMMA: "Gemma (<start_of_turn>user/model ... <end_of_turn>; system as a user turn)",
    Template.CUSTOM: "your four strings, each with {Content}",
}


def render(template: PromptTemplate, messages: list[dict[str, str]]) -> str:
    """Render ``messages`` with the four strings (the ``inference_model.json`` side).

    Example:
        >>> render(PRESETS[Template.CHATML], [{"role": "user", "content": "Hi"}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    parts = [template.bos] if messages else []
    for index, message in enumerate(messages):
        last_user = index == len(messages) - 1 and message["role"] == "user"
        pattern = template.prompt if last_user else getattr(template, message["role"])
        parts.append(pattern.replace(PLACEHOLDER, message["content"]))
    return "".join(parts)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def to_jinja(template: PromptTemplate) -> str:
    """A Jinja chat template that renders exactly like :func:`render` (with the generation prompt).

    Example:
        >>> "message['content']" in to_jinja(PRESETS[Template.CHATML])
        True
    """
    template.validate()

    def expr(pattern: str) -> str:
        before, after = pattern.split(PLACEHOLDER)
        return "{{ " + _literal(before) + " + message['content'] + " + _literal(after) + " }}"

    bos = "{{ " + _literal(template.bos) + " }}" if template.bos else ""
    return (
        bos + "{% for message in messages %}"
        "{% if loop.last and message['role'] == 'user' %}" + expr(template.prompt)
        + "{% elif message['role'] == 'system' %}" + expr(template.system)
        + "{% elif message['role'] == 'user' %}" + expr(template.user)
        + "{% else %}" + expr(template.assistant)
        + "{% endif %}{% endfor %}"
    )


class TemplateRaised(TemplateError):
    """The chat template called ``raise_exception`` (its message is :attr:`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the chat template raised: {reason}")
        self.reason = reason


class _TemplateDict:
    """transformers' ``dict`` global: builds dicts, offers ``fromkeys``, exposes nothing else."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@functools.lru_cache(maxsize=32)
def _compile(jinja_template: str):
    """Compile a chat template in the environment transformers 5 uses (``utils/chat_template_utils.py``)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: marks the assistant's tokens for training; renders its body."""

        tags = {"generation"}  # noqa: RUF012 (jinja's own class attribute)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """transformers' namespace: no underscore-prefixed attributes."""

        def __init__(*args, **kwargs):  # the signature trick of jinja's own Namespace
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    def raise_exception(message: str) -> None:
        raise TemplateRaised(str(message))

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class LimitedSandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with calls nested at most :data:`MAX_CALL_DEPTH` deep (a macro that recurses)."""

        def call(self, context, obj, /, *args, **kwargs):
            depth = getattr(_RENDERING, "depth", 0)
            if depth >= MAX_CALL_DEPTH:
                raise _TooDeep
            _RENDERING.depth = depth + 1
            try:
                return super().call(context, obj, *args, **kwargs)
            finally:
                _RENDERING.depth = depth

    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=_TemplateDict(), namespace=Namespace)
    return env.from_string(jinja_template)


#: Calls (macros, filters, functions) nested deeper than this stop a rendering: a chat template needs a handful,
#: and Python's own recursion limit (about 1,000 frames, several per Jinja call) must never be what stops one.
MAX_CALL_DEPTH = 64
#: Seconds a rendering may take (wall clock). A chat template renders a conversation in milliseconds; one that
#: takes longer loops over something huge, and every caller (registration, doctor, chat, serve, the picker) would hang.
RENDER_SECONDS = 5.0
#: Characters a rendering may produce: a prompt longer than this fits no small model's context.
MAX_RENDERED_CHARS = 10_000_000

_RENDERING = threading.local()


class _TooDeep(Exception):
    """Raised inside a rendering whose calls nest past :data:`MAX_CALL_DEPTH`."""


class _TooLong(Exception):
    """Raised (asynchronously) into a rendering still running at its deadline."""


def _limit_message(what: str) -> str:
    return (f"the chat template cannot be rendered: {what}; fix the template, or register the model with a preset "
            "(--template chatml, ...)")


def _render_within(template, seconds: float, **variables: object) -> str:
    """``template.render(**variables)``, stopped at ``seconds`` of wall clock or :data:`MAX_RENDERED_CHARS`.

    Jinja renders in Python bytecode in this thread; at the deadline a timer raises :class:`_TooLong`
    in it (``PyThreadState_SetAsyncExc``, checked between bytecodes, so a loop of any shape stops).
    The lock makes the timer's raise and the end of the rendering exclude each other, and a raise
    that was sent but not yet delivered is withdrawn.
    """
    thread, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "sent": False}

    def expire() -> None:
        with lock:
            if not state["done"]:
                state["sent"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(_TooLong))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    try:
        timer.start()
        try:
            size, pieces = 0, []
            for piece in template.generate(**variables):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise TemplateError(_limit_message(f"it writes more than {MAX_RENDERED_CHARS:,} characters"))
                pieces.append(piece)
            return "".join(pieces)
        finally:
            timer.cancel()
            with lock:
                state["done"] = True
                if state["sent"]:  # sent after the last bytecode of the rendering: withdraw it
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)
    except _TooLong:
        raise TemplateError(_limit_message(f"it ran past {seconds:g} s (a loop over something huge?)")) from None


def render_jinja(jinja_template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                 bos_token: str = "", eos_token: str = "", seconds: float | None = None) -> str:
    """Render a Jinja chat template as transformers' ``apply_chat_template`` does, in its sandbox, with limits.

    Every template the toolkit renders goes through here (registration, doctor, chat, serve, the
    picker): a rendering stops at ``seconds`` of wall clock (default :data:`RENDER_SECONDS`), at
    :data:`MAX_RENDERED_CHARS`, or at calls nested :data:`MAX_CALL_DEPTH` deep (a macro that calls
    itself), with one line.

    Raises:
        TemplateRaised: the template called ``raise_exception``.
        TemplateError: the template does not parse, fails to render, or passes a limit (one line).
    """
    from jinja2 import TemplateError as JinjaError

    try:
        return _render_within(_compile(jinja_template), RENDER_SECONDS if seconds is None else seconds,
                              messages=messages, tools=None, documents=None,
                              add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token)
    except JinjaError as exc:
        reason = " ".join(str(exc).split())
        raise TemplateError(f"the chat template cannot be rendered: {reason}") from exc
    except (_TooDeep, RecursionError):
        raise TemplateError(_limit_message(f"it nests calls more than {MAX_CALL_DEPTH} deep (a macro that calls "
                                           "itself without end?)")) from None
    except (MemoryError, OverflowError) as exc:
        raise TemplateError(_limit_message(f"it builds a value too large ({type(exc).__name__})")) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        # Python's own errors from the template's expressions (1 / 0, 'a' + 1, ...): transformers lets them through.
        reason = " ".join(str(exc).split())[:200]
        raise TemplateError(f"the chat template cannot be rendered: {type(exc).__name__}: {reason}") from exc


_BOS = "\x02BOS\x03"
_S, _U1, _A1, _U2 = "\x02SYS\x03", "\x02USER1\x03", "\x02ASSISTANT1\x03", "\x02USER2\x03"
PROBE = [
    {"role": "system", "content": _S}, {"role": "user", "content": _U1},
    {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2},
]


def _probe_render(jinja_template: str, messages: list[dict[str, str]], **options: object) -> str:
    """Render a probe, turning the template's own refusal into one line that names the fix."""
    try:
        return render_jinja(jinja_template, messages, **options)
    except TemplateRaised as exc:
        raise TemplateError(f"The model's chat template refuses a system/user/assistant conversation "
                            f"(it raises {' '.join(exc.reason.split())!r}), so four strings cannot express it: "
                            f"{_fix(jinja_template)}.") from exc
    except TemplateError as exc:
        text = str(exc).removeprefix("the ")  # "the chat template cannot be rendered: ..."
        raise TemplateError(f"The model's {text}" + ("." if "--template" in text
                                                     else f"; {_fix(jinja_template)}.")) from exc


def derive(jinja_template: str, *, bos_token: str = "", eos_token: str = "") -> PromptTemplate:
    """Derive the four strings from a model's Jinja chat template by rendering a probe.

    Works for templates where every turn is ``prefix + content + end`` with one shared
    ``end`` (ChatML, Phi-3, Llama-3, Gemma 1, SmolLM and most others). The template is
    rendered with the model's own ``bos_token`` and ``eos_token``; a BOS it writes before
    the first message, with or without a system message, becomes :attr:`PromptTemplate.bos`.

    Raises:
        TemplateError: the template is empty, fails, or has a shape we cannot express; the
            message names the preset whose markers match, or ``custom``.
    """
    if not jinja_template or not jinja_template.strip():
        raise TemplateError("The model has no chat template; choose a preset with --template (e.g. chatml).")
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    text = _probe_render(jinja_template, PROBE, **tokens)
    fix = _fix(jinja_template)
    try:
        pos = [text.index(marker) for marker in (_S, _U1, _A1, _U2)]
        end = _turn_end(jinja_template, PROBE[:3], bos_token=bos_token, eos_token=eos_token)
    except ValueError as exc:
        raise TemplateError(
            f"The chat template drops some messages of a system/user/assistant probe; {fix}."
        ) from exc
    if pos != sorted(pos):
        raise TemplateError(f"The chat template reorders the messages of a probe; {fix}.")
    system_prefix = text[:pos[0]]
    between = [text[pos[i] + len(m):pos[i + 1]] for i, m in enumerate((_S, _U1, _A1))]
    if not end or not all(part.startswith(end) for part in between):
        folded = bool(end) and not between[0].startswith(end)
        what = ("folds the system text into the first user turn" if folded
                else "ends its turns with different markers")
        raise TemplateError(f"The chat template {what}, which four strings cannot express; {fix}.")
    user_prefix, assistant_prefix = between[0][len(end):], between[1][len(end):]
    if between[2][len(end):] != user_prefix:
        raise TemplateError(f"The chat template formats user turns differently; {fix}.")
    generation = text[pos[3] + len(_U2):]
    if not generation.startswith(end):
        raise TemplateError(f"The chat template's generation prompt has an unexpected shape; {fix}.")
    bos = ""
    if bos_token and system_prefix.startswith(bos_token):
        # The template writes {{ bos_token }} itself (rendered with a marker in its place, so a ChatML template whose
        # first turn merely starts like SmolLM2's BOS "<|im_start|>" is not taken for one), before the first
        # message whichever it is (a user turn alone too): once per conversation.
        marked = {"bos_token": _BOS, "eos_token": eos_token}
        if all(_probe_render(jinja_template, probe, **marked).startswith(_BOS) for probe in (PROBE, PROBE[1:2])):
            bos, system_prefix = bos_token, system_prefix[len(bos_token):]
    derived = PromptTemplate(
        system=system_prefix + PLACEHOLDER + end,
        user=user_prefix + PLACEHOLDER + end,
        assistant=assistant_prefix + PLACEHOLDER + end,
        prompt=user_prefix + PLACEHOLDER + generation,
        bos=bos,
    )
    derived.validate()
    return derived


def read_chat_template(model_dir: Path, *, runtime: bool = False) -> str:
    """The Jinja chat template a model folder carries ('' when none).

    Read as transformers 5 reads it: ``chat_template.jinja`` wins over ``tokenizer_config.json``'s
    ``chat_template``, which may be a string or a list of named templates (``[{"name": "default",
    "template": ...}]``; the ``default`` one is used). With ``runtime``, as Foundry Local's runtime
    reads it: ``tokenizer_config.json`` first (checked: with both present, ChatSession uses it).
    Registration writes the same template to both.

    Raises:
        TemplateError: named templates without a ``default`` one.
    """
    config = artifacts.read_json(model_dir / "tokenizer_config.json", {})
    value = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(value, list):
        named = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
        if "default" not in named:
            raise TemplateError(f"tokenizer_config.json has chat templates named {sorted(map(str, named))} but no "
                                "'default' one; choose a preset with --template or --template custom.")
        value = named["default"]
    from_config = value if isinstance(value, str) and value.strip() else ""
    jinja_file = model_dir / "chat_template.jinja"
    from_file = artifacts.read_text(jinja_file) if jinja_file.is_file() else ""
    first, second = (from_config, from_file) if runtime else (from_file, from_config)
    return first if first.strip() else second


def special_tokens(model_dir: Path) -> tuple[str, str]:
    """``(bos_token, eos_token)`` strings from ``tokenizer_config.json``."""
    config = artifacts.read_json(model_dir / "tokenizer_config.json", {})
    config = config if isinstance(config, dict) else {}

    def text(value: object) -> str:
        return str(value.get("content", "")) if isinstance(value, dict) else str(value or "")

    return text(config.get("bos_token")), text(config.get("eos_token"))


@dataclass(frozen=True)
class ResolvedTemplate:
    """A template choice made concrete: the four strings and the Jinja that matches them.

    Attributes:
        choice: The preset (or ``auto``/``custom``).
        prompt_template: The four ``inference_model.json`` strings.
        jinja: The chat template written to the tokenizer files.
        notes: Differences worth knowing that do not make the two disagree on the probe
            (e.g. a default system prompt only the Jinja adds).
        bos_token: The model's BOS token, as the runtime passes it to the Jinja.
        eos_token: The model's EOS token, likewise.
    """

    choice: Template
    prompt_template: PromptTemplate
    jinja: str
    notes: tuple[str, ...] = ()
    bos_token: str = ""
    eos_token: str = ""


def resolve(choice: Template | str, model_dir: Path, custom: PromptTemplate | None = None) -> ResolvedTemplate:
    """Turn a template choice into four strings plus the matching Jinja template.

    ``auto`` keeps the model's own Jinja (so ChatSession is unchanged) and derives the
    strings from it; presets and ``custom`` generate the Jinja from the strings.

    Raises:
        TemplateError: unknown choice, malformed custom strings, or ``auto`` impossible.
    """
    try:
        choice = Template(choice)
    except ValueError as exc:
        raise TemplateError(f"Unknown template {choice!r}; choose one of {[t.value for t in Template]}.") from exc
    bos, eos = special_tokens(model_dir)
    if choice is Template.AUTO:
        jinja = read_chat_template(model_dir)
        derived = derive(jinja, bos_token=bos, eos_token=eos)
        # The probe has a system turn; without one, some templates add a default system prompt.
        without_system = PROBE[1:]
        jinja_text = render_jinja(jinja, without_system, bos_token=bos, eos_token=eos)
        strings_text = render(derived, without_system)
        notes: tuple[str, ...] = ()
        if jinja_text != strings_text:
            note = (f"Without a system message the model's chat template renders differently from "
                    f"inference_model.json (it adds {_extra(jinja_text, strings_text)!r}); the SDK's ChatSession "
                    "will add it, the foundry CLI will not. Send a system message, or register a preset to drop it "
                    "everywhere.")
            notes = (note,)
        return ResolvedTemplate(choice, derived, jinja, notes, bos, eos)
    if choice is Template.CUSTOM:
        if custom is None:
            raise TemplateError("--template custom needs the four strings (system, user, assistant, prompt).")
        template = custom
    else:
        template = PRESETS[choice]
    template.validate()
    return ResolvedTemplate(choice, template, to_jinja(template), (), bos, eos)


def _extra(longer: str, shorter: str) -> str:
    """What ``longer`` has that ``shorter`` lacks, shown as the first differing stretch."""
    start = next((i for i, (a, b) in enumerate(zip(longer, shorter)) if a != b), min(len(longer), len(shorter)))
    return longer[start:start + max(0, len(longer) - len(shorter))]


def check_consistency(resolved: ResolvedTemplate, *, bos_token: str | None = None,
                      eos_token: str | None = None) -> None:
    """Render the probe both ways, the Jinja with the model's BOS and EOS as the runtime does; raise on any difference.

    Raises:
        TemplateError: they disagree (one line, both renderings, the fix).
    """
    bos = resolved.bos_token if bos_token is None else bos_token
    eos = resolved.eos_token if eos_token is None else eos_token
    from_strings = render(resolved.prompt_template, PROBE)
    from_jinja = render_jinja(resolved.jinja, PROBE, bos_token=bos, eos_token=eos)
    if from_strings != from_jinja:
        raise TemplateError(
            "inference_model.json and the chat template disagree on a probe conversation "
            f"(strings: {from_strings!r}; jinja: {from_jinja!r}); {_fix(resolved.jinja)}."
        )


def rendered_turn_end(jinja_template: str, *, bos_token: str = "", eos_token: str = "") -> str:
    """What a Jinja chat template writes after an assistant's content (its end-of-turn marker).

    Raises:
        TemplateError: the template fails on a user/assistant conversation.
    """
    try:
        return _turn_end(jinja_template, PROBE[1:3], bos_token=bos_token, eos_token=eos_token, probe=False)
    except ValueError:
        return ""


_EOS = "\x02EOS\x03"


def _turn_end(jinja_template: str, messages: list[dict[str, str]], *, bos_token: str, eos_token: str,
              probe: bool = True) -> str:
    """What follows the last (assistant) message of ``messages`` rendered without a generation prompt.

    A template may close a conversation with the EOS token when no answer is asked for (Phi-4-mini
    writes ``{% else %}{{ eos_token }}`` after its last ``<|end|>``): a training-time ending that no
    turn inside a conversation has. It is rendered with a marker in the EOS token's place and left out.

    Raises:
        ValueError: the rendering drops the last message.
        TemplateError: the template fails to render.
    """
    options = {"add_generation_prompt": False, "bos_token": bos_token, "eos_token": _EOS if eos_token else ""}
    closed = (_probe_render if probe else render_jinja)(jinja_template, messages, **options)
    end = closed[closed.index(_A1) + len(_A1):]
    if end.endswith(_EOS) and end != _EOS:
        end = end.removesuffix(_EOS)
    return end.replace(_EOS, eos_token)
