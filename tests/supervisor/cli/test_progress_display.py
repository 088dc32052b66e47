"""Progress a running supervisor shows: a bar on a terminal, throttled log lines always."""

from __future__ import annotations

import io
import logging

import pytest

from engines.progress_bar import render_line
from protocol import ipc
from supervisor.studio.job_runner import ProgressLogger
from supervisor.worker_state import ActiveJob


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal_and_logs(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    job = ActiveJob("job-1", "image", "m", "sdcpp", "sdcpp-default-0")
    show = ProgressLogger(job)
    show(ipc.Progress("job-1", "downloading", 512 * 1024, 1024 * 1024, "model.gguf"))
    show(ipc.Progress("job-1", "downloading", 1024 * 1024, 1024 * 1024, "model.gguf"))
    show(ipc.Progress("job-1", "generating", 1, 4, ""))
    show(ipc.Progress("job-1", "generating", 4, 4, ""))
    out = terminal.getvalue()
    assert "job-1 downloading model.gguf [" in out and "512.0 KiB / 1.0 MiB" in out
    assert "job-1 generating [" in out and "4 / 4 steps" in out
    assert (job.phase, job.step, job.total) == ("generating", 4, 4)
    lines = [r.getMessage() for r in caplog.records]
    assert "progress job job-1 phase=downloading step=524288/1048576 model.gguf" in lines
    assert "progress job job-1 phase=generating step=4/4" in lines


def test_no_bar_without_a_terminal(monkeypatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    ProgressLogger(ActiveJob("j", "llm", "m", "llama", "s"))(ipc.Progress("j", "generating", 1, 2))
    assert pipe.getvalue() == ""


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("bytes", "[##############--------------]  50%  1.0 KiB / 2.0 KiB"), ("steps", "1 / 2 steps")],
)
def test_render_line_units(unit: str, expected: str) -> None:
    done, total = (1024, 2048) if unit == "bytes" else (1, 2)
    assert expected in render_line("x", done, total, unit)
