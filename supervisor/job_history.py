"""What the worker remembers of jobs that have finished: the last ``HISTORY_JOBS`` of them
one by one, and an hour of per-minute totals for the status page's charts.

Pure and bounded: each record is taken with the wall-clock time as an argument, so it is
tested without a clock, and neither series grows past its limit however long the worker
runs. The per-minute series is kept apart from the job list because a busy worker finishes
far more than 50 jobs in an hour. It holds no prompt and no secret: what the page shows of
a running job's prompt lives on the job itself and goes when the job does.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import msgspec

HISTORY_JOBS: Final = 50
CHART_MINUTES: Final = 60
SECONDS_PER_MINUTE: Final = 60


class FinishedJob(msgspec.Struct):
    """One finished job. ``outcome``: done, failed_retryable, failed_final or cancelled
    (the session ended under it); ``cause`` is the failure's typed cause, if it failed."""

    job_id: str
    kind: str
    model: str
    engine: str
    slot: str
    outcome: str
    duration_s: float
    finished_at: float  # Unix time
    cause: str | None = None
    lane: str = ""


class MinuteTotals(msgspec.Struct):
    """Jobs that finished in one wall-clock minute (``minute``: Unix time / 60)."""

    minute: int
    jobs: int = 0
    failed: int = 0
    seconds_sum: float = 0.0
    seconds_max: float = 0.0


class JobHistory:
    def __init__(self) -> None:
        self.jobs: deque[FinishedJob] = deque(maxlen=HISTORY_JOBS)
        self._minutes: deque[MinuteTotals] = deque(maxlen=CHART_MINUTES)

    def record(self, job: FinishedJob) -> None:
        self.jobs.append(job)
        minute = int(job.finished_at // SECONDS_PER_MINUTE)
        if not self._minutes or self._minutes[-1].minute < minute:
            self._minutes.append(MinuteTotals(minute))
        # A clock stepped back lands in the newest minute rather than reordering the series.
        totals = self._minutes[-1]
        totals.jobs += 1
        totals.failed += job.outcome != "done"
        totals.seconds_sum += job.duration_s
        totals.seconds_max = max(totals.seconds_max, job.duration_s)

    def recent(self) -> list[FinishedJob]:
        """Newest first."""
        return list(reversed(self.jobs))

    def per_minute(self, now: float) -> list[MinuteTotals]:
        """The ``CHART_MINUTES`` minutes up to ``now``, oldest first, empty minutes
        included, so a chart's x axis is time and not whatever minutes had jobs."""
        last = int(now // SECONDS_PER_MINUTE)
        kept = {t.minute: t for t in self._minutes}
        first = last - CHART_MINUTES + 1
        return [
            msgspec.structs.replace(kept[m]) if m in kept else MinuteTotals(m)
            for m in range(first, last + 1)
        ]


def merged_minutes(series: list[list[MinuteTotals]]) -> list[MinuteTotals]:
    """Several lanes' ``per_minute`` series (same minutes, same order) as one."""
    if not series:
        return []
    merged = [MinuteTotals(t.minute) for t in series[0]]
    for one in series:
        for total, add in zip(merged, one, strict=True):
            total.jobs += add.jobs
            total.failed += add.failed
            total.seconds_sum += add.seconds_sum
            total.seconds_max = max(total.seconds_max, add.seconds_max)
    return merged
