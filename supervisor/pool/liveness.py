"""Is a host still alive and its job still moving? Pure rules over times and states.

The slot's watchdog asks ``liveness_verdict`` on every tick with what it knows (when the
host was spawned, its last heartbeat and state, the running job's clocks); the answer is
None (all is well) or why the host must go. Per-state heartbeat timeouts: loading may take
longer than idling, because a host's I/O thread can be starved while a model loads. A job
that is downloading its model answers to the download limits (no bytes for
``download_stall_s``, longer than ``download_deadline_s``) instead of the job deadline and
the stall timeout, which count generation only (``job_clock``).
"""

from __future__ import annotations

from supervisor.pool.job_clock import JobClock
from supervisor.pool.settings import PoolSettings
from supervisor.pool.verdict import LossCause, Verdict


def heartbeat_limit_s(settings: PoolSettings, host_state: str, has_job: bool) -> float:
    if host_state in ("loading", "downloading"):
        return settings.heartbeat_timeout_loading_s
    if has_job or host_state == "generating":
        return settings.heartbeat_timeout_busy_s
    return settings.heartbeat_timeout_idle_s


def liveness_verdict(
    settings: PoolSettings,
    now: float,
    *,
    ready: bool,
    spawned_at: float,
    host_state: str,
    last_beat_at: float,
    job: JobClock | None,
) -> Verdict | None:
    if not ready:
        if now - spawned_at > settings.ready_timeout_s:
            return Verdict(
                LossCause.READY_TIMEOUT,
                f"did not report ready within {settings.ready_timeout_s:g} s",
            )
        return None
    silent = now - last_beat_at
    if silent > heartbeat_limit_s(settings, host_state, job is not None):
        return Verdict(LossCause.HANG, f"stopped responding (no heartbeat for {silent:.1f} s)")
    if job is not None and job.downloading_since is not None:
        return _download_verdict(settings, now, job.downloading_since, job.bytes_at)
    if job is not None:
        if now > job.deadline:
            return Verdict(LossCause.DEADLINE, f"ran past the job deadline of {job.deadline_s:g} s")
        if now - job.progress_at > settings.stall_timeout_s:
            return Verdict(LossCause.STALL, f"made no progress for {now - job.progress_at:.0f} s")
    return None


def _download_verdict(
    settings: PoolSettings, now: float, since: float, bytes_at: float
) -> Verdict | None:
    if now - since > settings.download_deadline_s:
        return Verdict(
            LossCause.DOWNLOAD_DEADLINE,
            f"was still downloading after {now - since:.0f} s "
            f"(download_deadline_s={settings.download_deadline_s:g})",
        )
    if now - bytes_at > settings.download_stall_s:
        return Verdict(
            LossCause.DOWNLOAD_STALL,
            f"downloaded nothing for {now - bytes_at:.0f} s "
            f"(download_stall_s={settings.download_stall_s:g})",
        )
    return None
