"""A small chat box over a registered model (streaming, multi-turn, reset)."""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as w

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.runtimes.foundry import Generation, LoadedModel


class ChatBox(w.VBox):
    """Chat with a model Foundry Local has registered, as ``slmops chat`` does in a terminal.

    The model loads on the first message; ``Reset`` starts a new conversation.

    Example:
        >>> box = ChatBox("smollm2-int4")
        >>> box.send("What is the capital of France?")
        'The capital of France is Paris.'
    """

    def __init__(self, name: str, *, cache: str | Path | None = None, system: str | None = None,
                 max_tokens: int = 256, temperature: float = 0.7) -> None:
        self._name, self._cache, self._system = name, cache, system
        self._max_tokens, self._temperature = max_tokens, temperature
        self._model: LoadedModel | None = None
        self._turns: list[tuple[str, str]] = []
        self._transcript = w.HTML(self._render())
        self._input = w.Text(placeholder="Ask something; Enter sends", layout=w.Layout(width="520px"))
        self._send_button = w.Button(description="Send", button_style="primary")
        self._reset_button = w.Button(description="Reset")
        self._status = w.Label()
        super().__init__(children=[self._transcript, w.HBox([self._input, self._send_button, self._reset_button]),
                                   self._status])
        self._input.on_submit(self._on_submit)
        self._send_button.on_click(self._on_submit)
        self._reset_button.on_click(self._on_reset)

    def _render(self, pending: str = "") -> str:
        rows = [f"<div><b>{html.escape(who)}</b>: {html.escape(text)}</div>" for turn in self._turns
                for who, text in (("you", turn[0]), (self._name, turn[1]))]
        if pending:
            rows.append(f"<div><b>{html.escape(self._name)}</b>: {html.escape(pending)}</div>")
        header = f"<div style='color:#666'>chat with {html.escape(self._name)}</div>"
        return "<div style='max-width:720px;white-space:pre-wrap'>" + header + "".join(rows) + "</div>"

    def send(self, message: str) -> str:
        """Send one user message, stream the answer into the transcript, and return it."""
        if self._model is None:
            self._status.value = f"loading {self._name}..."
            self._model = LoadedModel(self._name, self._cache)
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

    def close(self) -> None:
        """Unload the model."""
        if self._model is not None:
            self._model.close()
            self._model = None
        super().close()

    def _on_submit(self, _source: object) -> None:
        message = self._input.value.strip()
        if message:
            self._input.value = ""
            self.send(message)

    def _on_reset(self, _button: object) -> None:
        self.reset()
