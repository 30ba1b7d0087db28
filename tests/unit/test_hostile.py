"""Hostile and broken input, the parts that start no model: the battery's size, and an unexpected error in one
line (its traceback only under ``--debug``)."""

from __future__ import annotations

import pytest

from slmops.toolkit import cli
from tests.integration.test_hostile import BATTERY


def test_the_battery_is_large_enough() -> None:
    assert len(BATTERY) >= 40 and len({case[0] for case in BATTERY}) == len(BATTERY)


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: object) -> int:
        raise KeyError("a bug of ours")

    monkeypatch.setattr(cli.models, "cmd_ls", broken)
    assert cli.main(["ls"]) == 1
    err = capsys.readouterr().err
    assert "unexpected error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "ls"])
