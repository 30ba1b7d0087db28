"""Which prompt template a model gets: its own Jinja template read and probed, ``auto`` derived, a choice resolved.

``auto`` derives the four :class:`~slmops.toolkit.domain.templates.PromptTemplate` strings from a
model's own Jinja template by rendering probe conversations (:func:`derive`);
:func:`check_consistency` checks that the four strings and the Jinja template agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slmops.toolkit.core import artifacts
from slmops.toolkit.core.errors import TemplateError
from slmops.toolkit.domain.jinja_render import TemplateRaised, render_jinja
from slmops.toolkit.domain.templates import PLACEHOLDER, PRESETS, PromptTemplate, Template, fix_hint, render, to_jinja

#: Markers the probe conversations carry in place of content, found again in the rendering.
_S, _U1, _A1, _U2 = "\x02SYS\x03", "\x02USER1\x03", "\x02ASSISTANT1\x03", "\x02USER2\x03"
_BOS = "\x02BOS\x03"


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
                            f"{fix_hint(jinja_template)}.") from exc
    except TemplateError as exc:
        text = str(exc).removeprefix("the ")  # "the chat template cannot be rendered: ..."
        raise TemplateError(f"The model's {text}" + ("." if "--template" in text
                                                     else f"; {fix_hint(jinja_template)}.")) from exc


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
    fix = fix_hint(jinja_template)
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
            f"(strings: {from_strings!r}; jinja: {from_jinja!r}); {fix_hint(resolved.jinja)}."
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
