"""What the running supervisor knows about itself, in one place.

The session, the control socket (``supervisor status``), the metrics endpoint and the
capabilities all read this object and the pool's slots; nothing keeps a second copy.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import anyio

from supervisor.job_history import FinishedJob, JobHistory
from supervisor.session_state import SessionEvent, SessionPhase, session_machine
from supervisor.stats import JOB_SECONDS_BUCKETS, DurationHistogram


@dataclass
class ActiveJob:
    job_id: str
    kind: str
    model: str
    engine: str
    slot_id: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "queued"
    step: int = 0
    total: int = 0
    detail: str = ""  # what the phase works on (a file name), from the host's progress
    prompt_preview: str = ""  # the first 200 characters, for the status page only
    outcome: str = "cancelled"  # until the runner says how it ended
    cause: str | None = None


class WorkerState:
    def __init__(self) -> None:
        self.paused = False
        self.shutting_down = False
        self.session = session_machine()
        self.worker_id: str | None = None
        self.jobs: dict[str, ActiveJob] = {}
        self.last_heartbeat_ack: float | None = None
        self.reconnects = 0
        self.sessions_welcomed = 0
        # outcome -> count: done, failed_retryable, failed_final, rejected_busy, rejected_paused
        self.job_outcomes: Counter[str] = Counter()
        # cause of each failed job: vram_oom, signal, poison, upload, missing_engine, ...
        self.job_failures: Counter[str] = Counter()
        # (kind, engine) -> how long accepted jobs took, accept to result delivered
        self.job_seconds: dict[tuple[str, str], DurationHistogram] = {}
        self.history = JobHistory()
        self.reconnect_attempt = 0  # the session loop's current one, while it backs off
        self.changed = anyio.Event()

    def nudge(self) -> None:
        """Something the heartbeat advertises may have changed (slots, pause)."""
        self.changed.set()
        self.changed = anyio.Event()

    @property
    def phase(self) -> SessionPhase:
        return self.session.state

    def session_event(self, event: SessionEvent) -> None:
        self.session.apply(event)

    def count_outcome(self, job_id: str, outcome: str, cause: str | None = None) -> None:
        """Count how a job ended (``cause``: why it failed) and note it on the job, for the
        history ``finish_job`` writes."""
        self.job_outcomes[outcome] += 1
        if cause is not None:
            self.job_failures[cause] += 1
        job = self.jobs.get(job_id)
        if job is not None:
            job.outcome, job.cause = outcome, cause

    def finish_job(self, job_id: str) -> None:
        """The job is over (delivered, failed or abandoned): forget it, time it, keep it
        in the history."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        key = (job.kind, job.engine)
        hist = self.job_seconds.get(key)
        if hist is None:
            hist = self.job_seconds[key] = DurationHistogram(JOB_SECONDS_BUCKETS)
        elapsed = time.monotonic() - job.started
        hist.observe(elapsed)
        self.history.record(
            FinishedJob(
                job.job_id,
                job.kind,
                job.model,
                job.engine,
                job.slot_id,
                job.outcome,
                round(elapsed, 3),
                time.time(),
                job.cause,
            )
        )

    def current_job_id(self) -> str | None:
        """The oldest running job, for the heartbeat's single ``currentJobId``."""
        if not self.jobs:
            return None
        return min(self.jobs.values(), key=lambda j: j.started).job_id

    def seconds_since_heartbeat_ack(self) -> float | None:
        if self.last_heartbeat_ack is None:
            return None
        return time.monotonic() - self.last_heartbeat_ack
