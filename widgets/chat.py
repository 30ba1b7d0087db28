"""A small chat box over the run's registered models (streaming, multi-turn, reset)."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as w

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_requests import Generation


class ChatBox(w.VBox):
    """Chat with any model Foundry Local has registered for the run, as ``slmops chat`` does in a terminal.

    ``models`` lists what the picker offers (every precision, the base included): a list, or a
    callable that :meth:`refresh` rereads (e.g. after registration). The model loads on the first
    message; picking another one, or ``Reset``, starts a new conversation.

    What was typed is sent whole whatever the kernel is doing: the text box syncs its value only
    on Enter (``continuous_update=False``), and a submit that reaches a busy kernel before the
    value does is held until the value arrives. (With a value synced per keystroke, the
    front end holds later keystrokes back while the kernel is busy but sends the submit at once,
    so a busy kernel saw only the first letter.)

    Example:
        >>> box = ChatBox(["smollm2-int4", "smollm2-fp32", "smollm2-base"])
        >>> box.send("What is the capital of France?")
        'The capital of France is Paris.'
    """

    def __init__(self, models: str | Sequence[str] | Callable[[], Sequence[str]], *,
                 cache: str | Path | None = None, system: str | None = None, max_tokens: int = 256,
                 temperature: float = 0.7) -> None:
        self._models = models
        self._cache, self._system = cache, system
        self._max_tokens, self._temperature = max_tokens, temperature
        self._model: LoadedModel | None = None
        self._loaded = ""
        self._turns: list[tuple[str, str]] = []
        self._submitted = False
        self._picker = w.Dropdown(description="Model", layout=w.Layout(width="520px"))
        self._transcript = w.HTML()
        self._input = w.Text(placeholder="Ask something; Enter sends", continuous_update=False,
                             layout=w.Layout(width="520px"))
        self._send_button = w.Button(description="Send", button_style="primary")
        self._reset_button = w.Button(description="Reset")
        self._status = w.Label()
        super().__init__(children=[self._picker, self._transcript,
                                   w.HBox([self._input, self._send_button, self._reset_button]), self._status])
        self.refresh()
        self._transcript.value = self._render()
        self._input.on_submit(self._on_submit)
        self._input.observe(self._on_value, names="value")
        self._send_button.on_click(self._on_submit)
        self._reset_button.on_click(self._on_reset)
        self._picker.observe(self._on_pick, names="value")

    @property
    def model(self) -> str:
        """The model the next message goes to."""
        return self._picker.value or ""

    @model.setter
    def model(self, name: str) -> None:
        self._picker.value = name

    def refresh(self) -> None:
        """Reread the models to offer (kept: the one picked, when still offered; else the first)."""
        listed = self._models() if callable(self._models) else (
            [self._models] if isinstance(self._models, str) else self._models)
        names = list(dict.fromkeys(listed))
        current = self._picker.value
        self._picker.options = names
        self._picker.value = current if current in names else (names[0] if names else None)
        if not names:
            self._status.value = "no registered model yet: register the run's models above first"

    def _render(self, pending: str = "") -> str:
        name = self.model
        rows = [f"<div><b>{html.escape(who)}</b>: {html.escape(text)}</div>" for turn in self._turns
                for who, text in (("you", turn[0]), (name, turn[1]))]
        if pending:
            rows.append(f"<div><b>{html.escape(name)}</b>: {html.escape(pending)}</div>")
        header = f"<div style='color:#666'>chat with {html.escape(name or 'no model yet')}</div>"
        return "<div style='max-width:720px;white-space:pre-wrap'>" + header + "".join(rows) + "</div>"

    def send(self, message: str) -> str:
        """Send one user message to the picked model, stream the answer into the transcript, and return it."""
        name = self.model
        if not name:
            self._status.value = "no registered model yet: register the run's models above first"
            return ""
        if self._model is None or self._loaded != name:
            self._unload()
            self._status.value = f"loading {name}..."
            self._model, self._loaded = LoadedModel(name, self._cache), name
        answer = ""
        try:
            for piece in self._model.chat(message, system=self._system, max_tokens=self._max_tokens,
                                          temperature=self._temperature):
                if isinstance(piece, Generation):
                    self._status.value = f"{piece.completion_tokens} tokens, {piece.decode_tps:.1f} tok/s"
                else:
                    answer += piece
                    self._transcript.value = self._render(answer)
        except SlmopsError as exc:
            self._status.value = f"error: {exc}"
            return ""
        self._turns.append((message, answer.strip()))
        self._transcript.value = self._render()
        return answer.strip()

    def reset(self) -> None:
        """Forget the conversation."""
        self._turns.clear()
        if self._model is not None:
            self._model.reset()
        self._transcript.value = self._render()
        self._status.value = "conversation reset"

    def transcript_html(self) -> str:
        """The conversation so far as HTML (for reports, where widgets do not render)."""
        return self._render()

    def _unload(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model, self._loaded = None, ""

    def close(self) -> None:
        """Unload the model."""
        self._unload()
        super().close()

    def _on_submit(self, _source: object) -> None:
        message = self._input.value.strip()
        if not message:  # the text's value is still on its way (a busy kernel): send it when it lands
            self._submitted = True
            return
        self._submitted = False
        self._input.value = ""
        self.send(message)

    def _on_value(self, change: dict) -> None:
        if self._submitted and change["new"].strip():
            self._on_submit(None)

    def _on_pick(self, _change: dict) -> None:
        self._turns.clear()  # another model: a new conversation
        self._transcript.value = self._render()

    def _on_reset(self, _button: object) -> None:
        self.reset()
