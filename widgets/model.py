"""Model picker: the bundled SmolLM2 or a Hugging Face folder, checked as the path is typed."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as w
import traitlets

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.stages.convert_checks import check_source
from slmops.toolkit.weights.bundled import bundled_model


@dataclass(frozen=True)
class ModelChoice:
    """The model to convert; ``os.fspath(choice)`` is its folder, so toolkit functions take it as a path.

    Attributes:
        folder: A Hugging Face model folder; empty means the bundled SmolLM2-135M-Instruct.
        error: Why the folder cannot be converted; empty when it can.
    """

    folder: str = ""
    error: str = ""

    @property
    def path(self) -> Path:
        """The folder (the bundled model is unpacked on first use)."""
        if self.folder:
            return Path(self.folder).expanduser()
        return bundled_model()

    def __fspath__(self) -> str:
        return str(self.path)


def describe(folder: str) -> ModelChoice:
    """A :class:`ModelChoice` for ``folder`` with the reason it cannot be converted, if any."""
    if not folder.strip():
        return ModelChoice()
    try:
        check_source(folder.strip())
    except SlmopsError as exc:
        return ModelChoice(folder.strip(), str(exc))
    return ModelChoice(folder.strip())


class ModelPicker(w.VBox):
    """Choose the bundled model or type a folder; the folder is checked on every keystroke.

    Example:
        >>> picker = ModelPicker()
        >>> picker._folder.value = "/no/such/folder"
        >>> bool(picker.value.error)
        True
    """

    value = traitlets.Instance(ModelChoice)

    def __init__(self, folder: str = "") -> None:
        self._source = w.ToggleButtons(options=[("bundled SmolLM2-135M", "bundled"), ("my folder", "folder")],
                                       value="folder" if folder else "bundled", description="Model")
        self._folder = w.Text(value=folder, placeholder="/path/to/hf-model (config.json, *.safetensors, tokenizer)",
                              description="Folder", continuous_update=True, layout=w.Layout(width="640px"))
        self._status = w.HTML()
        super().__init__(children=[self._source, self._folder, self._status])
        self.value = self._current()
        self._show()
        self._source.observe(self._on_change, names="value")
        self._folder.observe(self._on_change, names="value")

    def _current(self) -> ModelChoice:
        if self._source.value == "bundled":
            return ModelChoice()
        if not self._folder.value.strip():
            return ModelChoice("", "type the folder of a Hugging Face model")
        return describe(self._folder.value)

    def _show(self) -> None:
        self._folder.disabled = self._source.value == "bundled"
        choice = self.value
        if choice.error:
            self._status.value = f"<span style='color:#b00'>✗ {html.escape(choice.error)}</span>"
        elif not choice.folder:
            self._status.value = "✓ the bundled SmolLM2-135M-Instruct (unpacked locally, no download)"
        else:
            source = check_source(choice.folder)
            self._status.value = (f"<span style='color:#070'>✓ {html.escape(source.architecture)}, "
                                  f"{source.parameters / 1e6:.0f}M parameters, context {source.context_length}"
                                  f"</span> — {html.escape(os.fspath(source.path))}")

    def _on_change(self, _change: dict) -> None:
        self.value = self._current()
        self._show()
