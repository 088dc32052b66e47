"""stable-diffusion.cpp's process-wide progress and log callbacks, and the errors they catch.

The library keeps one progress and one log callback per process; this module installs them
once, keeps their ctypes thunks alive for the life of the process, routes progress to the
current job and log lines to the ``engines.sdcpp.native`` logger (warnings and errors, or
everything with ``STUDIO_WORKER_SDCPP_VERBOSE=1``), and keeps the first errors of the current
phase so a failed load or generation is reported in the library's words. It must not print
to stdout/stderr and never loads or samples itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import stable_diffusion_cpp as sd_cpp

log = logging.getLogger("engines.sdcpp")
native_log = logging.getLogger("engines.sdcpp.native")

VERBOSE_ENV: Final = "STUDIO_WORKER_SDCPP_VERBOSE"
_NATIVE_LEVELS: Final = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
_KEPT_ERRORS: Final = 3
_SOURCE_PREFIX: Final = re.compile(r"^[\w.+-]+:\d+\s+-\s+")  # "model.cpp:1035 - "

StepFn = Callable[[int, int], None]


class NativeHooks:
    """The library's process-wide progress and log callbacks, installed once and kept alive.

    stable-diffusion.cpp holds one progress and one log callback per process. The wrapper's
    ``progress_callback=`` argument installs a ctypes thunk that dies when the call returns,
    while the library keeps calling it (the next model load reports per-tensor progress), so
    this engine never passes it and routes its own long-lived thunk to the current job.
    """

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.errors: list[str] = []  # the first few of the current phase: the cause comes first
        self._on_step: StepFn | None = None
        self._progress_thunk = sd_cpp.sd_progress_callback(self._progress)
        self._log_thunk = sd_cpp.sd_log_callback(self._log)
        sd_cpp.sd_set_progress_callback(self._progress_thunk, ctypes.c_void_p(0))
        sd_cpp.sd_set_log_callback(self._log_thunk, ctypes.c_void_p(0))

    @contextmanager
    def reporting(self, on_step: StepFn | None) -> Iterator[None]:
        """Route progress reports to ``on_step`` and collect fresh errors for the duration."""
        self.errors.clear()
        self._on_step = on_step
        try:
            yield
        finally:
            self._on_step = None

    def first_errors(self) -> str:
        return "; ".join(self.errors)

    def _progress(self, step: int, steps: int, _time: float, _data: object) -> None:
        on_step = self._on_step
        if on_step is None:
            return
        try:
            on_step(step, steps)
        except Exception:  # an exception must not unwind through C frames
            log.exception("progress report failed")

    def _log(self, level: int, text: bytes | None, _data: object) -> None:
        line = (text or b"").decode("utf-8", errors="replace").strip()
        py_level = _NATIVE_LEVELS.get(level, logging.ERROR)
        if py_level >= logging.ERROR and len(self.errors) < _KEPT_ERRORS:
            self.errors.append(_SOURCE_PREFIX.sub("", line))
        if self.verbose or py_level >= logging.WARNING:
            native_log.log(py_level, "%s", line)


_hooks_lock = threading.Lock()
_hooks: NativeHooks | None = None


def native_hooks() -> NativeHooks:
    """The process's hooks, installed on first use (the verbosity of the first caller wins)."""
    global _hooks
    with _hooks_lock:
        if _hooks is None:
            verbose = os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")
            _hooks = NativeHooks(verbose)
        return _hooks
