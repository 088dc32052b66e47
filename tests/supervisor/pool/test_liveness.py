"""The watchdog's pure rules: ready timeout, per-state heartbeat limits, deadline, stall, and
the download limits that replace the last two while a job downloads its model."""

from __future__ import annotations

from pathlib import Path

from supervisor.pool.job_clock import JobClock
from supervisor.pool.liveness import heartbeat_limit_s, liveness_verdict
from supervisor.pool.settings import PoolSettings

S = PoolSettings(
    models_root=Path("/nonexistent"),
    ready_timeout_s=10,
    heartbeat_timeout_idle_s=5,
    heartbeat_timeout_busy_s=20,
    heartbeat_timeout_loading_s=100,
    stall_timeout_s=60,
    download_stall_s=30,
    download_deadline_s=500,
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
    job = JobClock(deadline_s=30.0, counting_from=0.0, progress_at=0.0)
    assert verdict(15.0, last_beat_at=14.0, job=job) is None
    late = verdict(31.0, last_beat_at=30.5, job=job)
    assert late.cause == "deadline" and "deadline of 30 s" in late.detail
    stuck = JobClock(deadline_s=1000.0, counting_from=0.0, progress_at=0.0)
    assert verdict(61.0, last_beat_at=60.5, job=stuck).cause == "stall"


def test_a_download_answers_to_the_download_limits_not_the_deadline_or_the_stall() -> None:
    job = JobClock(deadline_s=30.0, counting_from=0.0, progress_at=0.0)
    job.progressed("downloading", 1.0, "m.gguf", 100)
    assert job.downloading
    job.progressed("downloading", 90.0, "m.gguf", 200)  # past the deadline and the stall
    assert verdict(100.0, host_state="downloading", last_beat_at=99.0, job=job) is None
    stalled = verdict(120.5, host_state="downloading", last_beat_at=120.0, job=job)
    assert stalled.cause == "download_stall" and "nothing for 30 s" in stalled.detail
    assert (stalled.crash, stalled.strikes_job) == (True, False)


def test_a_download_past_its_deadline() -> None:
    job = JobClock(deadline_s=30.0, counting_from=0.0, progress_at=0.0)
    for t in range(0, 510, 10):
        job.progressed("downloading", float(t), "m.gguf", t)
    late = verdict(501.5, host_state="downloading", last_beat_at=501.0, job=job)
    assert late.cause == "download_deadline" and "download_deadline_s=500" in late.detail
    assert (late.crash, late.strikes_job) == (True, False)


def test_the_job_deadline_starts_when_the_download_ends() -> None:
    job = JobClock(deadline_s=30.0, counting_from=0.0, progress_at=0.0)
    job.phase_seen("generating", 0.5)  # the host's state before its download: no change
    job.progressed("downloading", 1.0, "m.gguf", 1)
    job.phase_seen("downloading", 2.0)  # a heartbeat: still the same download
    assert job.downloading_since == 1.0
    job.progressed("downloading", 100.0, "m.gguf", 2)
    job.phase_seen("loading", 110.0)
    assert not job.downloading and job.deadline == 140.0
    assert verdict(139.0, last_beat_at=138.5, job=job) is None
    assert verdict(140.5, last_beat_at=140.0, job=job).cause == "deadline"
