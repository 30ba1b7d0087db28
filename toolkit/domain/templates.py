"""Prompt templates: one choice that both Foundry Local runtimes obey.

The ``foundry`` CLI reads four ``PromptTemplate`` strings from ``inference_model.json``;
the SDK's ``ChatSession`` reads the tokenizer's Jinja chat template. A
:class:`PromptTemplate` is turned into a Jinja template (:func:`to_jinja`) that renders
exactly what :func:`render` makes from the four strings, and ``auto`` derives the four
strings from a model's own Jinja template by rendering probe conversations.

Rendering rule for the four strings: every message but the last is its role's string
with ``{Content}`` replaced; a final user message uses ``prompt`` (user turn plus the
start of the assistant's answer). Strings are concatenated with nothing in between.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from toolkit.core import artifacts
from toolkit.core.errors import TemplateError

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
    """The four ``inference_model.json`` strings, each with one ``{Content}``."""

    system: str
    user: str
    assistant: str
    prompt: str

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
        """The ``PromptTemplate`` object of ``inference_model.json``."""
        return {name: getattr(self, name) for name in _FIELDS}


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


def _preset(system: str, user: str, assistant: str, end: str) -> PromptTemplate:
    return PromptTemplate(
        system=system + PLACEHOLDER + end,
        user=user + PLACEHOLDER + end,
        assistant=assistant + PLACEHOLDER + end,
        prompt=user + PLACEHOLDER + end + assistant,
    )


_CHATML = _preset("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n")

#: Presets, exact to each family's published chat template for system/user/assistant turns.
#: Qwen and SmolLM use ChatML (the tutorial's template); their own Jinja adds a default
#: system prompt when none is given, which four strings cannot express. Mistral is the
#: v7 format with a real system turn (Mistral Small 3 and later; older Mistral templates
#: fold the system prompt into the first user turn, which four strings cannot express).
PRESETS: dict[Template, PromptTemplate] = {
    Template.CHATML: _CHATML,
    Template.QWEN: _CHATML,
    Template.SMOLLM: _CHATML,
    Template.PHI3: _preset("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>\n"),
    Template.LLAMA3: _preset(
        "<|start_header_id|>system<|end_header_id|>\n\n", "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>",
    ),
    Template.MISTRAL: PromptTemplate(
        system="[SYSTEM_PROMPT]" + PLACEHOLDER + "[/SYSTEM_PROMPT]", user="[INST]" + PLACEHOLDER + "[/INST]",
        assistant=PLACEHOLDER + "</s>", prompt="[INST]" + PLACEHOLDER + "[/INST]",
    ),
    Template.GEMMA: _preset("<start_of_turn>user\n", "<start_of_turn>user\n", "<start_of_turn>model\n",
                            "<end_of_turn>\n"),
}

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
    parts = []
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

    return (
        "{% for message in messages %}"
        "{% if loop.last and message['role'] == 'user' %}" + expr(template.prompt)
        + "{% elif message['role'] == 'system' %}" + expr(template.system)
        + "{% elif message['role'] == 'user' %}" + expr(template.user)
        + "{% else %}" + expr(template.assistant)
        + "{% endif %}{% endfor %}"
    )


def render_jinja(jinja_template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                 bos_token: str = "", eos_token: str = "") -> str:
    """Render a Jinja chat template in a sandbox (no attribute access to Python internals).

    Raises:
        TemplateError: the template does not parse or fails to render.
    """
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the chat template raised: {message}")

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(jinja_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token
        )
    except JinjaError as exc:
        raise TemplateError(f"the chat template cannot be rendered: {exc}") from exc


_S, _U1, _A1, _U2 = "\x02SYS\x03", "\x02USER1\x03", "\x02ASSISTANT1\x03", "\x02USER2\x03"
PROBE = [
    {"role": "system", "content": _S}, {"role": "user", "content": _U1},
    {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2},
]


def derive(jinja_template: str, *, bos_token: str = "", eos_token: str = "") -> PromptTemplate:
    """Derive the four strings from a model's Jinja chat template by rendering a probe.

    Works for templates where every turn is ``prefix + content + end`` with one shared
    ``end`` (ChatML, Phi-3, Llama-3, Gemma, SmolLM and most others).

    Raises:
        TemplateError: the template is empty, fails, or has a shape we cannot express;
            the message says to pick a preset or ``custom``.
    """
    if not jinja_template or not jinja_template.strip():
        raise TemplateError("The model has no chat template; choose a preset with --template (e.g. chatml).")
    text = render_jinja(jinja_template, PROBE, bos_token=bos_token, eos_token=eos_token)
    closed = render_jinja(jinja_template, PROBE[:3], add_generation_prompt=False, bos_token=bos_token,
                          eos_token=eos_token)
    try:
        pos = [text.index(marker) for marker in (_S, _U1, _A1, _U2)]
        end = closed[closed.index(_A1) + len(_A1):]
    except ValueError as exc:
        raise TemplateError(
            "The chat template drops some messages of a system/user/assistant probe; "
            "choose a preset or --template custom."
        ) from exc
    system_prefix = text[:pos[0]]
    between = [text[pos[i] + len(m):pos[i + 1]] for i, m in enumerate((_S, _U1, _A1))]
    if not end or not all(part.startswith(end) for part in between):
        raise TemplateError(
            "The chat template's turns do not share one end marker; choose a preset or --template custom."
        )
    user_prefix, assistant_prefix = between[0][len(end):], between[1][len(end):]
    if between[2][len(end):] != user_prefix:
        raise TemplateError("The chat template formats user turns differently; choose a preset or custom.")
    generation = text[pos[3] + len(_U2):]
    if not generation.startswith(end):
        raise TemplateError("The chat template's generation prompt has an unexpected shape; choose a preset.")
    derived = PromptTemplate(
        system=system_prefix + PLACEHOLDER + end,
        user=user_prefix + PLACEHOLDER + end,
        assistant=assistant_prefix + PLACEHOLDER + end,
        prompt=user_prefix + PLACEHOLDER + generation,
    )
    derived.validate()
    return derived


def read_chat_template(model_dir: Path) -> str:
    """The Jinja chat template a model folder carries ('' when none).

    ``tokenizer_config.json``'s ``chat_template`` wins over ``chat_template.jinja``, as in
    the Foundry Local runtime (checked: with both present, ChatSession uses the former).
    """
    config = artifacts.read_json(model_dir / "tokenizer_config.json", {})
    value = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(value, str) and value.strip():
        return value
    jinja_file = model_dir / "chat_template.jinja"
    return artifacts.read_text(jinja_file) if jinja_file.is_file() else ""


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
    """

    choice: Template
    prompt_template: PromptTemplate
    jinja: str
    notes: tuple[str, ...] = ()


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
    if choice is Template.AUTO:
        jinja = read_chat_template(model_dir)
        bos, eos = special_tokens(model_dir)
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
        return ResolvedTemplate(choice, derived, jinja, notes)
    if choice is Template.CUSTOM:
        if custom is None:
            raise TemplateError("--template custom needs the four strings (system, user, assistant, prompt).")
        template = custom
    else:
        template = PRESETS[choice]
    template.validate()
    return ResolvedTemplate(choice, template, to_jinja(template))


def _extra(longer: str, shorter: str) -> str:
    """What ``longer`` has that ``shorter`` lacks, shown as the first differing stretch."""
    start = next((i for i, (a, b) in enumerate(zip(longer, shorter)) if a != b), min(len(longer), len(shorter)))
    return longer[start:start + max(0, len(longer) - len(shorter))]


def check_consistency(resolved: ResolvedTemplate, *, bos_token: str = "", eos_token: str = "") -> None:
    """Render the probe both ways and raise :class:`TemplateError` on any difference."""
    from_strings = render(resolved.prompt_template, PROBE)
    from_jinja = render_jinja(resolved.jinja, PROBE, bos_token=bos_token, eos_token=eos_token)
    if from_strings != from_jinja:
        raise TemplateError(
            "inference_model.json and the chat template disagree on a probe conversation:\n"
            f"  strings: {from_strings!r}\n  jinja:   {from_jinja!r}\nChoose a preset or --template custom."
        )
