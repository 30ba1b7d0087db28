"""ipywidgets controls for the notebooks; each control's ``value`` is a frozen dataclass the toolkit takes."""

from slmops.widgets.chat import ChatBox
from slmops.widgets.model import ModelChoice, ModelPicker
from slmops.widgets.pickers import PrecisionChoice, PrecisionPicker, TemplateChoice, TemplatePicker
from slmops.widgets.run import RunChoice, RunPanel, RunPicker, RunResult

__all__ = ["ChatBox", "ModelChoice", "ModelPicker", "PrecisionChoice", "PrecisionPicker", "RunChoice", "RunPanel",
           "RunPicker", "RunResult", "TemplateChoice", "TemplatePicker"]
