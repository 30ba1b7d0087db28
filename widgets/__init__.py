"""ipywidgets controls for the notebooks; each picker's ``value`` is a frozen dataclass the toolkit takes."""

from widgets.chat import ChatBox
from widgets.pickers import PrecisionChoice, PrecisionPicker, TemplateChoice, TemplatePicker

__all__ = ["ChatBox", "PrecisionChoice", "PrecisionPicker", "TemplateChoice", "TemplatePicker"]
