"""Pure pool and session policies: backoff, the reconnect cap, crash loops, poison jobs and
recycling (protocol.md §2.7, §11 ``session.rs``)."""

from __future__ import annotations

import pytest

from supervisor.pool.policies import (
    CrashLoopDetector,
    PoisonJobs,
    RecycleLimits,
    backoff_s,
    reconnect_exhausted,
)
from supervisor.pool.policies import (
    recycle_reason as reason,
)

MIB = 2**20

# --- backoff ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ms"), [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (10, 1000)]
)
def test_backoff_doubles_from_base_and_caps(attempt: int, ms: int) -> None:
    assert backoff_s(attempt, 0.1, 1.0) == pytest.approx(ms / 1000)


def test_reconnect_backoff_sequence() -> None:
    assert [backoff_s(n, 1.0, 30.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_before_the_first_attempt_is_zero(attempt: int) -> None:
    assert backoff_s(attempt, 1.0, 30.0) == 0.0


@pytest.mark.parametrize("attempt", [64, 1_000, 10**9])
def test_backoff_never_overflows(attempt: int) -> None:
    assert backoff_s(attempt, 1.0, 30.0) == 30.0


# --- reconnect cap ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "exhausted"),
    [(0, 1, False), (0, 10_000, False), (5, 5, False), (5, 6, True), (1, 1, False), (1, 2, True)],
)
def test_reconnect_exhausted(max_attempts: int, attempt: int, exhausted: bool) -> None:
    assert reconnect_exhausted(max_attempts, attempt) is exhausted


# --- crash loops ------------------------------------------------------------------------------


def test_k_crashes_within_the_window_park_the_slot() -> None:
    detector = CrashLoopDetector(max_crashes=3, window_s=60.0)
    assert detector.record(0.0) is False
    assert detector.record(10.0) is False
    assert detector.record(20.0) is True
    assert detector.recent == 3


def test_crashes_spread_beyond_the_window_do_not() -> None:
    detector = CrashLoopDetector(max_crashes=3, window_s=60.0)
    assert detector.record(0.0) is False
    assert detector.record(30.0) is False
    assert detector.record(61.0) is False  # the crash at 0 fell out of the window
    assert detector.recent == 2
    assert detector.record(89.0) is True


def test_a_crash_exactly_window_seconds_ago_still_counts() -> None:
    detector = CrashLoopDetector(max_crashes=2, window_s=60.0)
    detector.record(0.0)
    assert detector.record(60.0) is True
    detector.reset()
    detector.record(0.0)
    assert detector.record(60.001) is False


def test_reset_forgets_the_history() -> None:
    detector = CrashLoopDetector(max_crashes=2, window_s=60.0)
    detector.record(0.0)
    detector.reset()
    assert detector.recent == 0
    assert detector.record(1.0) is False


def test_forget_takes_back_one_crash_a_job_turned_out_to_cause() -> None:
    detector = CrashLoopDetector(max_crashes=2, window_s=60.0)
    assert detector.record(0.0) is False
    detector.forget(0.0)
    detector.forget(0.0)  # gone already (or out of the window): nothing happens
    assert detector.recent == 0
    assert detector.record(1.0) is False


def test_single_crash_limit_parks_at_once() -> None:
    assert CrashLoopDetector(max_crashes=1, window_s=1.0).record(5.0) is True


# --- poison jobs ------------------------------------------------------------------------------


def test_two_strikes_make_a_job_poison() -> None:
    poison = PoisonJobs()
    assert poison.strikes == 2
    assert poison.is_poison("job-1") is False
    assert poison.record("job-1") == 1
    assert poison.is_poison("job-1") is False
    assert poison.record("job-1") == 2
    assert poison.is_poison("job-1") is True
    assert poison.is_poison("job-2") is False


def test_poison_memory_is_bounded_oldest_forgotten_first() -> None:
    poison = PoisonJobs(strikes=1, remember=2)
    poison.record("a")
    poison.record("b")
    poison.record("c")
    assert [poison.is_poison(j) for j in "abc"] == [False, True, True]


# --- recycling --------------------------------------------------------------------------------

NEVER = RecycleLimits(after_jobs=0, rss_growth_bytes=0, vram_growth_bytes=0)
LIMITS = RecycleLimits(after_jobs=10, rss_growth_bytes=100 * MIB, vram_growth_bytes=50 * MIB)


def test_zero_limits_never_recycle() -> None:
    assert reason(NEVER, 10**6, 0, 2**40, 0, 2**40) is None


@pytest.mark.parametrize(
    ("jobs", "rss", "vram", "expected"),
    [
        (9, 0, 0, None),
        (10, 0, 0, "served 10 jobs (recycle_after_jobs=10)"),
        (11, 500 * MIB, 500 * MIB, "served 11 jobs (recycle_after_jobs=10)"),  # jobs first
        (0, 100 * MIB, 0, None),  # growth must exceed the limit
        (0, 101 * MIB, 0, "RSS grew by 101 MiB since model load"),
        (0, 0, 50 * MIB, None),
        (0, 0, 51 * MIB, "VRAM grew by 51 MiB since model load"),
        (0, 200 * MIB, 200 * MIB, "RSS grew by 200 MiB since model load"),  # RSS before VRAM
        (0, -100 * MIB, -100 * MIB, None),  # shrinking is fine
    ],
)
def test_recycle_reasons(jobs: int, rss: int, vram: int, expected: str | None) -> None:
    base = 1024 * MIB
    assert reason(LIMITS, jobs, base, base + rss, base, base + vram) == expected


def test_no_baseline_no_growth_check() -> None:
    assert reason(LIMITS, 0, None, 2**40, None, 2**40) is None
    assert reason(LIMITS, 0, 0, 0, 0, None) is None  # VRAM unknown now
