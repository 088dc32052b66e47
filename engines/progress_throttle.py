"""Fewer progress reports than events: downloads report per chunk and generation per
token, hundreds a second on a fast link or GPU. Every report is a ZeroMQ message, a
decode and a callback in the supervisor, which on a CPU machine take time from the
cores the engine is computing on (per-token reports cost 15 % of llama's tokens/s
on 2 cores). A person watching a progress bar gains nothing above ~10 updates a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

PROGRESS_INTERVAL_S: Final = 0.1

ProgressFn = Callable[[int, int], None]
"""``(done, total)``: bytes for a download, tokens for a generation."""


class ProgressThrottle:
    """Forwards the first update, then at most one per ``interval_s``, and the final one
    (``finish``) unless it repeats the last forwarded."""

    def __init__(
        self,
        callback: ProgressFn | None,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._callback = callback
        self._interval_s = interval_s
        self._clock = clock
        self._last_at: float | None = None
        self._last_sent: tuple[int, int] | None = None

    def update(self, done: int, total: int) -> None:
        if self._callback is None:
            return
        now = self._clock()
        if self._last_at is None or now - self._last_at >= self._interval_s:
            self._last_at = now
            self._send(done, total)

    def finish(self, done: int, total: int) -> None:
        if self._callback is not None and self._last_sent != (done, total):
            self._send(done, total)

    def _send(self, done: int, total: int) -> None:
        assert self._callback is not None
        self._last_sent = (done, total)
        self._callback(done, total)
