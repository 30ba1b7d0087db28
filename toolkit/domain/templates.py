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

Models' own Jinja templates are rendered as transformers 5 renders them (:func:`~slmops.toolkit.domain.jinja_render.render_jinja`):
the same sandbox settings, globals (``raise_exception``, ``strftime_now``, ``namespace``,
``dict``), the ``tojson`` filter, loop controls and the ``{% generation %}`` tag. Foundry
Local's runtime renders all of them too (checked on 2.2.1), so ``auto`` keeps the model's own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

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

    def unfolded(self, bos_token: str) -> PromptTemplate:
        """The template read back from :meth:`as_json`'s strings, with the BOS it folded in taken out again.

        Example:
            >>> PromptTemplate("<s>S{Content}", "U{Content}", "A{Content}", "<s>U{Content}A").unfolded("<s>").bos
            '<s>'
        """
        if not (bos_token and self.system.startswith(bos_token) and self.prompt.startswith(bos_token)):
            return self
        return replace(self, system=self.system[len(bos_token):], prompt=self.prompt[len(bos_token):], bos=bos_token)


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


def fix_hint(jinja_template: str) -> str:
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
