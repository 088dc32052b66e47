"""The watchdog's pure rules: ready timeout, per-state heartbeat limits, deadline, stall."""

from __future__ import annotations

from pathlib import Path

from supervisor.pool.liveness import RunningJobTimes, heartbeat_limit_s, liveness_verdict
from supervisor.pool.settings import PoolSettings

S = PoolSettings(
    models_root=Path("/nonexistent"),
    ready_timeout_s=10,
    heartbeat_timeout_idle_s=5,
    heartbeat_timeout_busy_s=20,
    heartbeat_timeout_loading_s=100,
    stall_timeout_s=60,
)


def verdict(now: float, **kw: object):  # type: ignore[no-untyped-def]
    base: dict[str, object] = {
        "ready": True,
        "spawned_at": 0.0,
        "host_state": "idle",
        "last_beat_at": 0.0,
        "job": None,
    }
    base.update(kw)
    return liveness_verdict(S, now, **base)  # type: ignore[arg-type]


def test_per_state_heartbeat_limits() -> None:
    assert heartbeat_limit_s(S, "idle", False) == 5
    assert heartbeat_limit_s(S, "idle", True) == 20
    assert heartbeat_limit_s(S, "generating", False) == 20
    assert heartbeat_limit_s(S, "loading", True) == 100
    assert heartbeat_limit_s(S, "downloading", False) == 100


def test_ready_timeout_only_before_ready() -> None:
    assert verdict(9.0, ready=False) is None
    v = verdict(10.5, ready=False)
    assert v is not None and (v.cause, v.crash) == ("ready_timeout", True)
    assert "within 10 s" in v.detail


def test_silence_is_a_hang_by_state() -> None:
    assert verdict(4.9) is None
    assert verdict(5.1).cause == "hang"
    assert verdict(50.0, host_state="loading") is None
    assert verdict(100.5, host_state="loading").cause == "hang"


def test_deadline_and_stall_of_a_running_job() -> None:
    job = RunningJobTimes(deadline=30.0, deadline_s=30.0, progress_at=0.0)
    assert verdict(15.0, last_beat_at=14.0, job=job) is None
    late = verdict(31.0, last_beat_at=30.5, job=job)
    assert late.cause == "deadline" and "deadline of 30 s" in late.detail
    stuck = RunningJobTimes(deadline=1000.0, deadline_s=1000.0, progress_at=0.0)
    assert verdict(61.0, last_beat_at=60.5, job=stuck).cause == "stall"
