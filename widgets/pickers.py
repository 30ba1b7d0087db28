"""Precision and prompt-template pickers.

Thin composites: a ``VBox`` with one ``value`` trait holding a frozen dataclass; child
widgets are private; handlers are ``_on_<child>_change``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as w
import traitlets

from slmops.toolkit.core.errors import TemplateError
from slmops.toolkit.domain.options import (
    BLOCK_SIZES,
    INT4_RECIPES,
    RECIPE_NOTES,
    TUTORIAL_ADVICE,
    TUTORIAL_SIZE_RATIO,
    Int4Algorithm,
    Int4Mix,
    Int4Options,
    Precision,
    TablePrecision,
)
from slmops.toolkit.domain.results.checklist import Thresholds
from slmops.toolkit.domain.results.deployment import PrecisionFigures
from slmops.toolkit.domain.template_resolve import resolve
from slmops.toolkit.domain.templates import PRESETS, TEMPLATE_NOTES, PromptTemplate, Template, render
from slmops.toolkit.domain.verdicts import TOP1_TARGET, status_at_least
from slmops.toolkit.presentation.report import measured_figures
from slmops.toolkit.presentation.tables import html_table

_SAMPLE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


@dataclass(frozen=True)
class PrecisionChoice:
    """Precisions to build and the INT4 options."""

    precisions: tuple[Precision, ...] = (Precision.INT4,)
    int4: Int4Options = field(default_factory=Int4Options)


def _status_words(top1: object) -> str:
    """Top-1 agreement against its target, as pass / warn / fail with the target stated."""
    if not isinstance(top1, int | float):
        return "measured size; quality not checked yet (notebook 03)"
    status = status_at_least(top1, TOP1_TARGET, floor=Thresholds().top1_min)
    return (f"{status}: top-1 agreement {top1:.3f} against a target of >= {TOP1_TARGET} "
            f"(fails below {Thresholds().top1_min})")


def tradeoff_table(precisions: tuple[Precision, ...], measured: dict[str, PrecisionFigures]) -> str:
    """HTML: per chosen precision, the tutorial's expected trade-off until a build exists, then what the run measured.

    A built precision shows its measured size against FP32 (the tutorial's ratio beside it, for
    reference) and its top-1 agreement as pass / warn / fail against the stated target, never the
    tutorial's advice (a built INT4 can be larger than INT8). The notebooks' one table renderer draws it.
    """
    rows = []
    for p in precisions:
        got = measured.get(p.value, PrecisionFigures("", p.value))
        built = isinstance(got.size_mb, int | float)
        ratio = got.x_fp32
        size = (f"×{ratio:.3f} measured (tutorial ×{TUTORIAL_SIZE_RATIO[p]})" if built and isinstance(ratio, int | float)
                else f"{got.size_mb:.4g} MB measured" if built else f"×{TUTORIAL_SIZE_RATIO[p]} (tutorial)")
        verdict = ("reference" if p is Precision.FP32 else _status_words(got.top1_agreement)) if built \
            else f"expected: {TUTORIAL_ADVICE[p]}"
        rows.append({"precision": p.value, "size × FP32": size, "verdict": verdict, "size_mb": got.size_mb,
                     "x_fp32": ratio, "top1_agreement": got.top1_agreement, "decode_tps": got.decode_tps})
    return html_table(rows, css_class="slmops-tradeoff")


def precision_label(p: Precision) -> str:
    """A precision's option in the picker: the tutorial's expectation, said to be the tutorial's.

    What a build measured is in the table under the picker (:func:`tradeoff_table`); the options
    keep their labels, since relabelling a multiple selection in the browser can clear what the
    user chose.

    Example:
        >>> precision_label(Precision.INT8)
        'int8: tutorial ×0.25 size, good quality, very fast; balanced (measured in the table below once built)'
    """
    return f"{p.value}: tutorial ×{TUTORIAL_SIZE_RATIO[p]} size, {TUTORIAL_ADVICE[p]} (measured in the table below once built)"


class PrecisionPicker(w.VBox):
    """Pick precisions and every INT4 option; a table shows the expected trade-off and, once measured, the real one.

    A recipe fills the INT4 fields; editing a field afterwards keeps the edit. With a
    ``run_dir``, the table shows what that run measured (:func:`slmops.toolkit.presentation.report.measured_figures`),
    and :meth:`refresh` rereads it; :attr:`measured` can also be set directly.

    Example:
        >>> picker = PrecisionPicker(["fp32", "int4"], recipe="compact")
        >>> picker.value.precisions, picker.value.int4.embeddings
        ((<Precision.FP32: 'fp32'>, <Precision.INT4: 'int4'>), <TablePrecision.INT4: 'int4'>)
    """

    value = traitlets.Instance(PrecisionChoice)
    measured = traitlets.Dict()

    def __init__(self, precisions: list[str] | tuple[str, ...] = ("int4",), *, recipe: str = "builder-default",
                 int4: Int4Options | None = None, run_dir: str | Path | None = None) -> None:
        self._run_dir = run_dir
        self._precisions = w.SelectMultiple(
            options=[(precision_label(p), p) for p in Precision],
            value=tuple(Precision(p) for p in precisions), rows=4, description="Precisions",
            layout=w.Layout(width="640px"),
        )
        self._recipe = w.Dropdown(options=[(f"{name}: {RECIPE_NOTES[name]}", name) for name in INT4_RECIPES],
                                  value=recipe, description="INT4 recipe", layout=w.Layout(width="640px"))
        style = {"description_width": "initial"}
        self._block_size = w.Dropdown(options=list(BLOCK_SIZES), description="block size", style=style)
        self._symmetric = w.Checkbox(description="symmetric", indent=False)
        self._accuracy = w.Dropdown(options=[("4: int8 compute", 4), ("3: bf16", 3), ("2: fp16", 2), ("1: fp32", 1),
                                             ("0: unset", 0)], description="accuracy level", style=style)
        self._algorithm = w.Dropdown(options=[a.value for a in Int4Algorithm], description="algorithm", style=style)
        self._lm_head = w.Dropdown(options=[t.value for t in TablePrecision], description="LM head", style=style)
        self._embeddings = w.Dropdown(options=[t.value for t in TablePrecision], description="embeddings",
                                      style=style)
        self._mix = w.Dropdown(options=[m.value for m in Int4Mix], description="8-bit MatMuls", style=style)
        self._rotate = w.Checkbox(description="rotate", indent=False)
        self._calibration = w.Text(description="GPTQ calibration", placeholder="bundled fine-tuning set", style=style)
        self._fields = [self._block_size, self._symmetric, self._accuracy, self._algorithm, self._lm_head,
                        self._embeddings, self._mix, self._rotate, self._calibration]
        self._set_fields(int4 or INT4_RECIPES[recipe])
        self._tradeoff = w.HTML()
        super().__init__(children=[self._precisions, self._recipe,
                                   w.HBox(self._fields[:3]), w.HBox(self._fields[3:6]), w.HBox(self._fields[6:]),
                                   self._tradeoff])
        self.value = self._current()
        self.refresh()
        self._show_tradeoff()
        self.observe(lambda _change: self._show_tradeoff(), names=["value", "measured"])
        self._precisions.observe(self._on_field_change, names="value")
        self._recipe.observe(self._on_recipe_change, names="value")
        for child in self._fields:
            child.observe(self._on_field_change, names="value")

    def _set_fields(self, options: Int4Options) -> None:
        self._block_size.value = options.block_size
        self._symmetric.value = options.symmetric
        self._accuracy.value = options.accuracy_level
        self._algorithm.value = options.algorithm.value
        self._lm_head.value = options.lm_head.value
        self._embeddings.value = options.embeddings.value
        self._mix.value = options.mix.value
        self._rotate.value = options.rotate
        self._calibration.value = options.calibration

    def _current(self) -> PrecisionChoice:
        options = Int4Options(self._block_size.value, self._symmetric.value, self._accuracy.value,
                              self._algorithm.value, self._lm_head.value, self._embeddings.value, self._mix.value,
                              self._rotate.value, self._calibration.value.strip())
        return PrecisionChoice(tuple(self._precisions.value), options)

    def refresh(self) -> None:
        """Reread the measured figures of ``run_dir``: the table then shows each built precision's measured size."""
        self.measured = measured_figures(self._run_dir) if self._run_dir else {}

    def _show_tradeoff(self) -> None:
        self._tradeoff.value = tradeoff_table(self.value.precisions, self.measured)

    def _on_recipe_change(self, change: dict) -> None:
        self._set_fields(INT4_RECIPES[change["new"]])
        self.value = self._current()

    def _on_field_change(self, _change: dict) -> None:
        self.value = self._current()


@dataclass(frozen=True)
class TemplateChoice:
    """A template preset (``auto`` derives it from the model), or ``custom`` with its four strings."""

    template: Template = Template.AUTO
    custom: PromptTemplate | None = None


_FIELDS = ("system", "user", "assistant", "prompt")


class TemplatePicker(w.VBox):
    """Pick a prompt-template preset, edit its four strings, and see the prompt a sample chat becomes.

    Editing a field turns the choice into ``custom`` with the edited strings; the preview
    follows every keystroke and shows what is wrong when a string is malformed.

    Example:
        >>> picker = TemplatePicker("chatml")
        >>> picker._fields["system"].value = "SYS: {Content}\\n"
        >>> picker.value.template, picker.value.custom.system
        (<Template.CUSTOM: 'custom'>, 'SYS: {Content}\\n')
    """

    value = traitlets.Instance(TemplateChoice)

    def __init__(self, template: str = "auto", *, model_dir: str | Path | None = None) -> None:
        self._model_dir = Path(model_dir) if model_dir else None
        self._preset = w.Dropdown(options=[(f"{t.value}: {TEMPLATE_NOTES[t]}", t.value) for t in Template],
                                  value=Template(template).value, description="Template",
                                  layout=w.Layout(width="640px"))
        self._fields = {name: w.Textarea(description=name, rows=2, layout=w.Layout(width="640px"))
                        for name in _FIELDS}
        self._preview = w.HTML()
        self._filling = False
        super().__init__(children=[self._preset, *self._fields.values(), w.HTML("<b>Preview</b> (system, user, "
                                   "assistant, user):"), self._preview])
        self.value = TemplateChoice(Template(template))
        self._fill(Template(template))
        self._preset.observe(self._on_preset_change, names="value")
        for field_widget in self._fields.values():
            field_widget.observe(self._on_field_change, names="value")

    def _strings_for(self, template: Template) -> tuple[PromptTemplate | None, str]:
        if template in PRESETS:
            return PRESETS[template], ""
        if template is Template.AUTO and self._model_dir is not None:
            try:
                return resolve(Template.AUTO, self._model_dir).prompt_template, ""
            except TemplateError as exc:
                return None, str(exc)
        if template is Template.AUTO:
            return None, "derived from the model's own chat template at registration"
        return self.value.custom, "type the four strings, each with {Content}"

    def _fill(self, template: Template) -> None:
        strings, message = self._strings_for(template)
        self._filling = True
        for name, field_widget in self._fields.items():
            field_widget.value = getattr(strings, name) if strings else field_widget.value
        self._bos = strings.bos if strings else getattr(self, "_bos", "")  # edits keep the family's BOS
        self._filling = False
        self._show_preview(strings, message)

    def _show_preview(self, strings: PromptTemplate | None, message: str = "") -> None:
        if strings is None:
            self._preview.value = f"<i>{html.escape(message)}</i>"
            return
        try:
            strings.validate()
            self._preview.value = f"<pre>{html.escape(render(strings, _SAMPLE))}</pre>"
        except TemplateError as exc:
            self._preview.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

    def _on_preset_change(self, change: dict) -> None:
        template = Template(change["new"])
        self.value = TemplateChoice(template, self.value.custom if template is Template.CUSTOM else None)
        self._fill(template)

    def _on_field_change(self, _change: dict) -> None:
        if self._filling:
            return
        edited = PromptTemplate(**{name: f.value for name, f in self._fields.items()}, bos=self._bos)
        self.value = TemplateChoice(Template.CUSTOM, edited)
        self._filling = True
        self._preset.value = Template.CUSTOM.value
        self._filling = False
        self._show_preview(edited)
