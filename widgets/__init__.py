"""ipywidgets controls for the notebooks; each ``value`` is a frozen dataclass the toolkit takes."""

from widgets.pickers import PrecisionChoice, PrecisionPicker, TemplateChoice, TemplatePicker

__all__ = ["PrecisionChoice", "PrecisionPicker", "TemplateChoice", "TemplatePicker"]
