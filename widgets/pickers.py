"""Precision and prompt-template pickers.

Thin composites: a ``VBox`` with one ``value`` trait holding a frozen dataclass; child
widgets are private; handlers are ``_on_<child>_change``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import ipywidgets as w
import traitlets

from toolkit.convert import TUTORIAL_ADVICE, TUTORIAL_SIZE_RATIO, Int4Options, Precision
from toolkit.errors import TemplateError
from toolkit.templates import PRESETS, Template, render

_SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@dataclass(frozen=True)
class PrecisionChoice:
    """Precisions to build and the INT4 options."""

    precisions: tuple[Precision, ...] = (Precision.INT4,)
    int4: Int4Options = field(default_factory=Int4Options)


class PrecisionPicker(w.VBox):
    """Pick precisions (with the tutorial's size/speed/quality trade-off) and the INT4 block size.

    Example:
        >>> picker = PrecisionPicker(["fp32", "int4"])
        >>> picker.value.precisions
        (<Precision.FP32: 'fp32'>, <Precision.INT4: 'int4'>)
    """

    value = traitlets.Instance(PrecisionChoice)

    def __init__(self, precisions: list[str] | tuple[str, ...] = ("int4",), *, block_size: int = 32) -> None:
        self._precisions = w.SelectMultiple(
            options=[(f"{p.value}: ×{TUTORIAL_SIZE_RATIO[p]} size, {TUTORIAL_ADVICE[p]}", p) for p in Precision],
            value=tuple(Precision(p) for p in precisions), rows=4, description="Precisions",
            layout=w.Layout(width="640px"),
        )
        self._block_size = w.Dropdown(options=[16, 32, 64, 128, 256], value=block_size, description="INT4 block")
        super().__init__(children=[self._precisions, self._block_size])
        self.value = self._current()
        self._precisions.observe(self._on_precisions_change, names="value")
        self._block_size.observe(self._on_block_size_change, names="value")

    def _current(self) -> PrecisionChoice:
        return PrecisionChoice(tuple(self._precisions.value), Int4Options(block_size=self._block_size.value))

    def _on_precisions_change(self, _change: dict) -> None:
        self.value = self._current()

    def _on_block_size_change(self, _change: dict) -> None:
        self.value = self._current()


@dataclass(frozen=True)
class TemplateChoice:
    """A template preset name (``auto`` derives it from the model)."""

    template: Template = Template.AUTO


class TemplatePicker(w.VBox):
    """Pick a prompt-template preset and preview what a sample conversation becomes.

    Example:
        >>> TemplatePicker("chatml").value.template
        <Template.CHATML: 'chatml'>
    """

    value = traitlets.Instance(TemplateChoice)

    def __init__(self, template: str = "auto") -> None:
        self._preset = w.Dropdown(options=[t.value for t in Template if t is not Template.CUSTOM],
                                  value=Template(template).value, description="Template")
        self._preview = w.HTML()
        super().__init__(children=[self._preset, self._preview])
        self.value = TemplateChoice(Template(template))
        self._show_preview()
        self._preset.observe(self._on_preset_change, names="value")

    def _show_preview(self) -> None:
        template = PRESETS.get(self.value.template)
        if template is None:
            text = "derived from the model's own chat template at registration"
        else:
            try:
                text = render(template, _SAMPLE)
            except TemplateError as exc:
                text = f"error: {exc}"
        self._preview.value = f"<pre>{html.escape(text)}</pre>"

    def _on_preset_change(self, change: dict) -> None:
        self.value = TemplateChoice(Template(change["new"]))
        self._show_preview()
