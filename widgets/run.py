"""Run panel: runs one stage with its progress bars and shows its results and plots inline; run picker:
the run folder to compare this one with."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ipywidgets as w
import traitlets
from IPython.display import display

from slmops.toolkit.core.errors import SlmopsError
from slmops.toolkit.orchestration.runs import RUN_FILE


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


@dataclass(frozen=True)
class RunChoice:
    """A run folder to compare with; ``os.fspath(choice)`` is the folder.

    Attributes:
        folder: The folder as typed or picked (empty: none chosen yet).
        error: Why it is no run folder (no ``params.json``); empty when it is one.
    """

    folder: str = ""
    error: str = ""

    def __fspath__(self) -> str:
        return self.folder


def runs_beside(folder: str | os.PathLike[str] | None) -> list[str]:
    """The run folders (each with a ``params.json``) beside ``folder`` (a run folder or its run file), not
    ``folder`` itself, newest first."""
    if not folder:
        return []
    here = Path(folder).expanduser().resolve()
    here = here.parent if here.is_file() else here
    try:
        found = [d for d in here.parent.iterdir() if d.is_dir() and d != here and (d / RUN_FILE).is_file()]
    except OSError:
        return []
    return [str(d) for d in sorted(found, key=lambda d: (d / RUN_FILE).stat().st_mtime, reverse=True)]


def describe_run(folder: str) -> RunChoice:
    """A :class:`RunChoice` for ``folder``, with the reason it is no run folder, if any."""
    folder = folder.strip()
    if not folder:
        return RunChoice()
    if not (Path(folder).expanduser() / RUN_FILE).is_file():
        return RunChoice(folder, f"{folder} is no run folder (no {RUN_FILE}): pick one `slmops demo`, `slmops run` "
                                 "or `slmops lab` wrote.")
    return RunChoice(str(Path(folder).expanduser().resolve()))


class RunPicker(w.VBox):
    """The baseline run to compare with: a folder typed, or picked among the runs beside this one; checked as typed.

    Example:
        >>> picker = RunPicker("", beside="outputs/lab")
        >>> picker._folder.value = "/no/such/run"
        >>> bool(picker.value.error)
        True
    """

    value = traitlets.Instance(RunChoice)

    def __init__(self, folder: str = "", *, beside: str | os.PathLike[str] | None = None,
                 description: str = "Baseline run") -> None:
        self._folder = w.Combobox(value=folder, options=runs_beside(beside), ensure_option=False,
                                  description=description, placeholder="a run folder: pick one or type its path",
                                  style={"description_width": "initial"}, layout=w.Layout(width="60em"))
        self._note = w.HTML()
        super().__init__(children=[self._folder, self._note])
        self._folder.observe(self._update, names="value")
        self._update()

    def _update(self, _change: object = None) -> None:
        self.value = describe_run(self._folder.value)
        self._note.value = (f"<span style='color:#b00'>✗ {html.escape(self.value.error)}</span>" if self.value.error
                            else "")
