"""The loaders' progress bar: redrawn on a terminal, one line in a log, nothing for quick work."""

from __future__ import annotations

import io

from engine.loaders import progress
from engine.loaders.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_one_line_for_slow_work_and_no_redraws(monkeypatch):
    monkeypatch.setattr(progress, "_SHOW_AFTER_S", 0.0)
    log = io.StringIO()
    bar = Progress("loading model.gguf", 3, log)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().startswith("loading model.gguf: 3/3 in ") and log.getvalue().count("\n") == 1


def test_a_terminal_gets_the_bar_redrawn_in_place(monkeypatch):
    monkeypatch.setattr(progress, "_SHOW_AFTER_S", 0.0)
    terminal = _Terminal()
    bar = Progress("loading", 2, terminal)
    bar.advance()
    bar.advance()
    bar.close()
    assert terminal.getvalue().count("\r") == 2 and "2/2" in terminal.getvalue() and terminal.getvalue().endswith("\n")


def test_quick_work_writes_nothing():
    for stream in (io.StringIO(), _Terminal()):
        bar = Progress("loading", 2, stream)
        bar.advance(2)
        bar.close()
        assert stream.getvalue() == ""
