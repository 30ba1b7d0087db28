"""ipywidgets controls for the notebooks; each control's ``value`` is a frozen dataclass the toolkit takes."""

from widgets.chat import ChatBox
from widgets.model import ModelChoice, ModelPicker
from widgets.pickers import PrecisionChoice, PrecisionPicker, TemplateChoice, TemplatePicker
from widgets.run import RunPanel, RunResult

__all__ = ["ChatBox", "ModelChoice", "ModelPicker", "PrecisionChoice", "PrecisionPicker", "RunPanel", "RunResult",
           "TemplateChoice", "TemplatePicker"]
