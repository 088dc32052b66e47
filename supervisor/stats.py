"""The little history the live state cannot answer by itself: durations and byte counts.

Everything else the metrics endpoint reports is read from the slots and ``WorkerState`` at
scrape time. Job durations, model load times and downloaded bytes are events, not states,
so they are recorded here where they happen (the job runner, the slot's inbox) and read
back by ``supervisor.metrics``. Pure: no clock of its own (callers pass ``now``), no I/O,
no Prometheus import.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

from protocol import ipc

# Seconds. Jobs run from a fraction of a second (synthetic, small LLM answers) to the
# default 30-minute deadline; model loads from ~1 s to minutes for multi-GB weights.
JOB_SECONDS_BUCKETS: Final = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LOAD_SECONDS_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class DurationHistogram:
    """Counts of observations per upper bound (non-cumulative), their sum and count."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class ProgressStats:
    """What a slot's ``Progress`` messages add up to over its life (all host generations).

    Download progress reports ``step`` = bytes so far of the file named in ``message``;
    only growth past the highest report of that file in the same job is counted, so a
    repeated report never counts twice (a download restarted from zero counts its bytes
    once). A load is timed from its ``loading`` step 0 to the report where ``step``
    reaches ``total``.
    """

    def __init__(self) -> None:
        self.download_bytes = 0
        self.load_seconds = DurationHistogram(LOAD_SECONDS_BUCKETS)
        self._job_id: str | None = None
        self._downloaded: dict[str, int] = {}  # file -> bytes counted, for the current job
        self._load_started: float | None = None

    def observe(self, msg: ipc.Progress, now: float) -> None:
        if msg.job_id != self._job_id:
            # A new job: partial downloads and loads of the last one (its host may have
            # died mid-way) never finish.
            self._job_id = msg.job_id
            self._downloaded.clear()
            self._load_started = None
        if msg.phase == "downloading":
            before = self._downloaded.get(msg.message, 0)
            if msg.step > before:
                self.download_bytes += msg.step - before
                self._downloaded[msg.message] = msg.step
        elif msg.phase == "loading":
            if msg.step == 0:
                self._load_started = now
            elif msg.step >= msg.total and self._load_started is not None:
                self.load_seconds.observe(now - self._load_started)
                self._load_started = None
