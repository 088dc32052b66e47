"""Pure policies of the pool and the session: backoff, crash loops, poison jobs, recycling.

Each is a function or a tiny class over numbers the caller passes in (times included), so
they are tested without a clock, a process or a socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before attempt ``n`` (n >= 1): ``min(base * 2^(n-1), max)``.

    The session uses it for reconnects (base 1 s, max 30 s: 1, 2, 4, 8, 16, 30, 30 ...);
    the pool for host restarts.
    """
    if attempt < 1:
        return 0.0
    # Cap the exponent so a long outage cannot overflow the float.
    return min(base_s * (2.0 ** min(attempt - 1, 62)), max_s)


def reconnect_exhausted(max_attempts: int, attempt: int) -> bool:
    """``max_attempts == 0`` means reconnect forever (the default since 0.4.9)."""
    return max_attempts > 0 and attempt > max_attempts


class CrashLoopDetector:
    """K host losses within T seconds mean the slot is flapping and must be parked."""

    def __init__(self, max_crashes: int, window_s: float) -> None:
        self.max_crashes = max_crashes
        self.window_s = window_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> bool:
        """Record a crash at ``now``; True when the slot should be parked."""
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) >= self.max_crashes

    def forget(self, at: float) -> None:
        """Take back the crash recorded at ``at`` (it turned out to be a job's fault); one
        already out of the window is gone anyway."""
        if at in self._times:
            self._times.remove(at)

    def reset(self) -> None:
        self._times.clear()

    @property
    def recent(self) -> int:
        return len(self._times)


class PoisonJobs:
    """Jobs that took a host down. Two strikes and the job is failed for good.

    A job that crashes every host it lands on would otherwise bounce between workers
    forever and eat the queue; after ``strikes`` losses it is failed ``retryable: false``.
    A loss is recorded here only once it is known to be the job's (``loss_ledger``).
    """

    def __init__(self, strikes: int = 2, remember: int = 10_000) -> None:
        self.strikes = strikes
        self._remember = remember
        self._counts: dict[str, int] = {}

    def record(self, job_id: str) -> int:
        self._counts[job_id] = self._counts.get(job_id, 0) + 1
        if len(self._counts) > self._remember:
            self._counts.pop(next(iter(self._counts)))
        return self._counts[job_id]

    def strikes_of(self, job_id: str) -> int:
        return self._counts.get(job_id, 0)

    def is_poison(self, job_id: str) -> bool:
        return self.strikes_of(job_id) >= self.strikes


@dataclass(frozen=True)
class RecycleLimits:
    after_jobs: int  # 0 = never
    rss_growth_bytes: int  # 0 = never
    vram_growth_bytes: int  # 0 = never


def recycle_reason(
    limits: RecycleLimits,
    jobs_done: int,
    rss_baseline: int | None,
    rss_now: int,
    vram_baseline: int | None,
    vram_now: int | None,
) -> str | None:
    """Why a host should be restarted between jobs, or None. Baselines are taken after
    the host's model load, so loading a model is never mistaken for a leak."""
    if limits.after_jobs and jobs_done >= limits.after_jobs:
        return f"served {jobs_done} jobs (recycle_after_jobs={limits.after_jobs})"
    if limits.rss_growth_bytes and rss_baseline is not None:
        grown = rss_now - rss_baseline
        if grown > limits.rss_growth_bytes:
            return f"RSS grew by {grown // 2**20} MiB since model load"
    if limits.vram_growth_bytes and vram_baseline is not None and vram_now is not None:
        grown = vram_now - vram_baseline
        if grown > limits.vram_growth_bytes:
            return f"VRAM grew by {grown // 2**20} MiB since model load"
    return None
