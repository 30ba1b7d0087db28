"""Run panel: runs one stage with its progress bars and shows its results and plots inline."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as w
import traitlets
from IPython.display import display

from slmops.toolkit.core.errors import SlmopsError


@dataclass(frozen=True)
class RunResult:
    """How the last run of a stage went."""

    stage: str
    ok: bool
    seconds: float
    message: str = ""


class RunPanel(w.VBox):
    """A button that runs ``action``, displays what ``show`` returns for its result (one object, or a
    tuple of them: tables, figures), then calls each of ``then``.

    ``then`` refreshes what depends on the stage (e.g. a picker's measured figures).

    The notebook calls :meth:`run` once. Interactive, that shows the button and waits: the stage
    starts when the user presses it, with the widgets' values at that moment (so Run All never
    starts work before the pickers were touched), and again at each press. Headless (papermill),
    :meth:`run` runs the stage at once on the parameters and returns its result; output goes
    straight to the cell (an ``Output`` widget would not survive the HTML render).

    Example:
        >>> panel = RunPanel("convert", lambda: convert_all(model, ["int4"], "out"), show=print, interactive=False)
        >>> manifests = panel.run()
    """

    value = traitlets.Instance(RunResult, allow_none=True)

    def __init__(self, stage: str, action: Callable[[], object], *, show: Callable[[object], object] | None = None,
                 then: list[Callable[[], object]] | tuple[Callable[[], object], ...] = (),
                 interactive: bool = True) -> None:
        self._stage, self._action, self._show_result, self._interactive = stage, action, show, interactive
        self._then = list(then)
        self._button = w.Button(description=f"Run {stage}", button_style="primary", icon="play")
        self._status = w.HTML()
        self._output = w.Output()
        super().__init__(children=[w.HBox([self._button, self._status]), self._output])
        self.value = None
        self.result: object = None
        self._button.on_click(self._on_button_click)

    def run(self) -> object:
        """Headless: run the stage now and return its result. Interactive: wait for the button (None).

        Raises:
            SlmopsError: headless, so papermill records the failure.
        """
        if not self._interactive:
            return self._run()
        self._status.value = f"<i>press <b>Run {self._stage}</b> to start</i>"
        return None

    def press(self) -> object:
        """What the button does: run the stage into the panel; an error is one line there (result None)."""
        self._output.clear_output()
        with self._output:
            try:
                return self._run()
            except SlmopsError:
                return None  # shown in the panel in one line, no traceback

    def _run(self) -> object:
        self._button.disabled = True
        self._status.value = f"<i>running {self._stage}…</i>"
        start = time.perf_counter()
        try:
            self.result = self._action()
            if self._show_result is not None:
                shown = self._show_result(self.result)
                for item in shown if isinstance(shown, tuple | list) else [shown]:
                    if item is not None:
                        display(item)
            for callback in self._then:
                callback()
        except SlmopsError as exc:
            self.value = RunResult(self._stage, False, time.perf_counter() - start, str(exc))
            # One line, no traceback: the message names the problem and the fix.
            self._status.value = f"<span style='color:#b00'>✗ {html.escape(str(exc))}</span>"
            raise
        finally:
            self._button.disabled = False
        self.value = RunResult(self._stage, True, time.perf_counter() - start)
        self._status.value = f"<span style='color:#070'>✓ {self._stage} done in {self.value.seconds:.1f} s</span>"
        return self.result

    def _on_button_click(self, _button: w.Button) -> None:
        self.press()
