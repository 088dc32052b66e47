"""The job queue of the local studio: job rows and every change of their status.

Each status change is a ``JobEvent`` applied through ``jobs.job_machine`` to the status the
row holds, so an event the table does not allow raises ``IllegalTransition`` before
anything is written; the write is a compare-and-set on the status and claimant read
before, so a lost race changes nothing and returns None. Called synchronously from the
event loop (a few rows on an indexed table each time). Knows nothing about sessions,
sockets or HTTP.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from localstudio.auth import new_id
from localstudio.jobs import (
    INITIAL,
    TRANSITIONS,
    JobEvent,
    JobStatus,
    event_after_failure,
    job_machine,
)
from localstudio.records import JobRecord, NewJob, job_from_row
from localstudio.schema import utc_now


class JobQueue:
    """Jobs in one database. Not thread-safe: use it from one thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # --- reading -------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def recent(self, status: JobStatus | None = None, limit: int = 500) -> list[JobRecord]:
        """The newest ``limit`` jobs (optionally of one status), newest first."""
        if status is None:
            rows = self._conn.execute(
                "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY seq DESC LIMIT ?",
                (status.value, limit),
            ).fetchall()
        return [job_from_row(row) for row in rows]

    def queued(self) -> list[JobRecord]:
        """Queued jobs, oldest first (the offer order)."""
        rows = self._conn.execute(
            "SELECT * FROM jobs WHERE status = ? ORDER BY seq", (JobStatus.QUEUED.value,)
        ).fetchall()
        return [job_from_row(row) for row in rows]

    # --- changes -------------------------------------------------------------------------

    def insert(self, new: NewJob) -> JobRecord:
        job_id = new_id("job")
        now = utc_now()
        self._conn.execute(
            "INSERT INTO jobs (id, status, kind, model, game_id, asset_name, task, model_source, "
            "vram_gb_estimate, max_attempts, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                INITIAL.value,
                new.kind,
                new.model,
                new.game_id,
                new.asset_name if new.asset_name is not None else job_id,
                new.task_json,
                new.model_source_json,
                new.vram_gb_estimate,
                new.max_attempts,
                now,
                now,
            ),
        )
        record = self.get(job_id)
        assert record is not None
        return record

    def claim(self, job_id: str, worker_id: str) -> bool:
        """Compare-and-set queued -> claimed for ``worker_id``; False when the race is lost."""
        job = self.get(job_id)
        if job is None or not job_machine(job.id, job.status).allows(JobEvent.CLAIM):
            return False
        return self._apply(job, JobEvent.CLAIM, claimed_by=worker_id) is not None

    def mark_accepted(self, job_id: str, worker_id: str) -> bool:
        """Stamp ``accepted_at`` on a job ``worker_id`` holds (not a status change)."""
        now = utc_now()
        cursor = self._conn.execute(
            "UPDATE jobs SET accepted_at = ?, updated_at = ? "
            "WHERE id = ? AND status = ? AND claimed_by = ?",
            (now, now, job_id, JobStatus.CLAIMED.value, worker_id),
        )
        return cursor.rowcount == 1

    def release(
        self, job_id: str, worker_id: str, *, count_attempt: bool, error: str | None = None
    ) -> JobRecord | None:
        """Give a claimed job back to the queue.

        Without ``count_attempt`` (a reject, an unanswered offer) the job is requeued as it
        was; ``error``, when given, replaces the last error. With it (the session died
        mid-job) the attempt counts and the job fails once attempts are exhausted. None
        when ``worker_id`` holds no claim.
        """
        job = self._claimed_by(job_id, worker_id)
        if job is None:
            return None
        if not count_attempt:
            kept_error = job.error if error is None else error
            return self._apply(
                job, JobEvent.RELEASE, claimed_by=None, accepted_at=None, error=kept_error
            )
        return self._end_attempt(job, error or "worker session lost", retryable=True)

    def fail(self, job_id: str, worker_id: str, error: str, *, retryable: bool) -> JobRecord | None:
        """Record a failed attempt; requeue or give up per ``event_after_failure``."""
        job = self._claimed_by(job_id, worker_id)
        if job is None:
            return None
        return self._end_attempt(job, error, retryable=retryable)

    def complete(
        self,
        job_id: str,
        worker_id: str,
        *,
        prompt: str | None,
        result_json: str | None = None,
        asset_path: str | None = None,
    ) -> JobRecord | None:
        """claimed -> done with a JSON result or an asset path; None when not held."""
        job = self._claimed_by(job_id, worker_id)
        if job is None:
            return None
        return self._apply(
            job,
            JobEvent.COMPLETE,
            result=result_json,
            asset_path=asset_path,
            prompt=prompt,
            error=None,
            finished_at=utc_now(),
        )

    def fail_unofferable(self, job_id: str, error: str) -> JobRecord | None:
        """queued -> failed for a job whose stored task can no longer be offered."""
        job = self.get(job_id)
        if job is None or not job_machine(job.id, job.status).allows(JobEvent.UNOFFERABLE):
            return None
        return self._apply(job, JobEvent.UNOFFERABLE, error=error, finished_at=utc_now())

    def release_orphaned_claims(self) -> int:
        """At startup no session exists: every claimed job is released, back as it was."""
        # One UPDATE for all rows, so the table is read here rather than row by row.
        source = JobStatus.CLAIMED
        target = TRANSITIONS[(source, JobEvent.RELEASE)]
        cursor = self._conn.execute(
            "UPDATE jobs SET status = ?, claimed_by = NULL, accepted_at = NULL, "
            "updated_at = ? WHERE status = ?",
            (target.value, utc_now(), source.value),
        )
        return cursor.rowcount

    def _claimed_by(self, job_id: str, worker_id: str) -> JobRecord | None:
        job = self.get(job_id)
        if job is None or job.status is not JobStatus.CLAIMED or job.claimed_by != worker_id:
            return None
        return job

    def _end_attempt(self, job: JobRecord, error: str, *, retryable: bool) -> JobRecord | None:
        attempts = job.attempts + 1
        event = event_after_failure(attempts, job.max_attempts, retryable=retryable)
        finished = utc_now() if event is JobEvent.GIVE_UP else None
        return self._apply(
            job,
            event,
            attempts=attempts,
            error=error,
            claimed_by=None,
            accepted_at=None,
            finished_at=finished,
        )

    def _apply(self, job: JobRecord, event: JobEvent, **fields: Any) -> JobRecord | None:
        """Move ``job`` by ``event`` (raising before any write when the table forbids it),
        then CAS the row from the status and claimant read before to the new one."""
        target = job_machine(job.id, job.status).apply(event)
        columns = {"status": target.value, "updated_at": utc_now(), **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        cursor = self._conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ? AND claimed_by IS ?",
            (*columns.values(), job.id, job.status.value, job.claimed_by),
        )
        if cursor.rowcount != 1:
            return None
        return self.get(job.id)
