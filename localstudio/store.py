"""Queries of the local studio: workers, registration requests, jobs and shipped logs.

``Store`` wraps one SQLite connection and is called synchronously from the event loop
(every query is a few rows on an indexed table). Job status changes go through
``_transition``, which checks the lifecycle table in ``jobs`` and writes with a
compare-and-set on the current status and claimant, so a lost race changes nothing and
returns None. JSON columns hold the wire encoding (camelCase) of the protocol structs.
This module knows nothing about sessions, sockets or HTTP.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localstudio.auth import new_id
from localstudio.jobs import JobStatus, check_transition, status_after_failure
from localstudio.schema import open_database, utc_now
from protocol.studio import LogEntry


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    token_hash: str | None
    capabilities_json: str
    created_at: str
    last_heartbeat_at: str | None


@dataclass(frozen=True, slots=True)
class RegistrationRecord:
    id: str
    install_id: str
    secret_hash: str
    capabilities_json: str
    user_agent: str
    status: str
    reason: str | None
    worker_id: str | None
    created_at: str
    decided_at: str | None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, JSON columns already encoded."""

    kind: str
    model: str
    game_id: str
    asset_name: str | None
    task_json: str
    model_source_json: str
    vram_gb_estimate: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    seq: int
    id: str
    status: JobStatus
    kind: str
    model: str
    game_id: str
    asset_name: str
    task_json: str
    model_source_json: str
    vram_gb_estimate: float
    attempts: int
    max_attempts: int
    claimed_by: str | None
    accepted_at: str | None
    error: str | None
    result_json: str | None
    asset_path: str | None
    prompt: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


@dataclass(frozen=True, slots=True)
class LogRecord:
    id: int
    worker_id: str
    ts: str
    level: str
    category: str
    message: str
    job_id: str | None
    received_at: str


def _job(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["task_json"] = values.pop("task")
    values["model_source_json"] = values.pop("model_source")
    values["result_json"] = values.pop("result")
    return JobRecord(**values)


def _worker(row: sqlite3.Row) -> WorkerRecord:
    values = dict(row)
    values["capabilities_json"] = values.pop("capabilities")
    return WorkerRecord(**values)


def _registration(row: sqlite3.Row) -> RegistrationRecord:
    values = dict(row)
    values["capabilities_json"] = values.pop("capabilities")
    return RegistrationRecord(**values)


class Store:
    """The studio's persistent state. Not thread-safe: use it from one thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        return cls(open_database(data_dir))

    def close(self) -> None:
        self._conn.close()

    # --- workers -------------------------------------------------------------------------

    def worker(self, worker_id: str) -> WorkerRecord | None:
        row = self._conn.execute("SELECT * FROM workers WHERE id = ?", (worker_id,)).fetchone()
        return None if row is None else _worker(row)

    def workers(self) -> list[WorkerRecord]:
        rows = self._conn.execute("SELECT * FROM workers ORDER BY created_at, id").fetchall()
        return [_worker(row) for row in rows]

    def set_worker_token(self, worker_id: str, token_hash: str) -> None:
        self._conn.execute(
            "UPDATE workers SET token_hash = ? WHERE id = ?", (token_hash, worker_id)
        )

    def record_heartbeat(self, worker_id: str, capabilities_json: str) -> None:
        self._conn.execute(
            "UPDATE workers SET capabilities = ?, last_heartbeat_at = ? WHERE id = ?",
            (capabilities_json, utc_now(), worker_id),
        )

    # --- registration requests -----------------------------------------------------------

    def request(self, request_id: str) -> RegistrationRecord | None:
        row = self._conn.execute(
            "SELECT * FROM registration_requests WHERE id = ?", (request_id,)
        ).fetchone()
        return None if row is None else _registration(row)

    def pending_requests(self) -> list[RegistrationRecord]:
        rows = self._conn.execute(
            "SELECT * FROM registration_requests WHERE status = 'pending' ORDER BY created_at, id"
        ).fetchall()
        return [_registration(row) for row in rows]

    def upsert_pending_request(
        self, install_id: str, secret_hash: str, capabilities_json: str, user_agent: str
    ) -> RegistrationRecord:
        """Create a pending request, or refresh the pending one of this install id.

        Refreshing replaces the secret hash: the newest poster holds the only secret the
        worker still has (a worker that lost its request id but kept its install id).
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            row = self._conn.execute(
                "SELECT id FROM registration_requests WHERE install_id = ? "
                "AND status = 'pending' ORDER BY created_at LIMIT 1",
                (install_id,),
            ).fetchone()
            if row is None:
                request_id = new_id("rr")
                self._conn.execute(
                    "INSERT INTO registration_requests (id, install_id, secret_hash, "
                    "capabilities, user_agent, status, created_at) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (request_id, install_id, secret_hash, capabilities_json, user_agent, utc_now()),
                )
            else:
                request_id = row["id"]
                self._conn.execute(
                    "UPDATE registration_requests SET secret_hash = ?, capabilities = ?, "
                    "user_agent = ? WHERE id = ?",
                    (secret_hash, capabilities_json, user_agent, request_id),
                )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        record = self.request(request_id)
        assert record is not None
        return record

    def approve_request(self, request_id: str) -> RegistrationRecord | None:
        """Approve a pending request, creating its worker; other states are returned as-is."""
        record = self.request(request_id)
        if record is None or record.status != "pending":
            return record
        worker_id = new_id("w")
        now = utc_now()
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT INTO workers (id, token_hash, capabilities, created_at) "
                "VALUES (?, NULL, ?, ?)",
                (worker_id, record.capabilities_json, now),
            )
            self._conn.execute(
                "UPDATE registration_requests SET status = 'approved', worker_id = ?, "
                "decided_at = ? WHERE id = ? AND status = 'pending'",
                (worker_id, now, request_id),
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return self.request(request_id)

    def reject_request(self, request_id: str, reason: str) -> RegistrationRecord | None:
        """Reject a pending request; other states are returned as-is."""
        self._conn.execute(
            "UPDATE registration_requests SET status = 'rejected', reason = ?, decided_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (reason, utc_now(), request_id),
        )
        return self.request(request_id)

    # --- jobs ----------------------------------------------------------------------------

    def insert_job(self, new: NewJob) -> JobRecord:
        job_id = new_id("job")
        now = utc_now()
        self._conn.execute(
            "INSERT INTO jobs (id, status, kind, model, game_id, asset_name, task, model_source, "
            "vram_gb_estimate, max_attempts, created_at, updated_at) "
            "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
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
        record = self.job(job_id)
        assert record is not None
        return record

    def job(self, job_id: str) -> JobRecord | None:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, status: JobStatus | None = None, limit: int = 500) -> list[JobRecord]:
        if status is None:
            rows = self._conn.execute(
                "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM jobs WHERE status = ? ORDER BY seq DESC LIMIT ?",
                (status.value, limit),
            ).fetchall()
        return [_job(row) for row in rows]

    def queued_jobs(self) -> list[JobRecord]:
        """Queued jobs, oldest first (the offer order)."""
        rows = self._conn.execute(
            "SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq"
        ).fetchall()
        return [_job(row) for row in rows]

    def claim(self, job_id: str, worker_id: str) -> bool:
        """Compare-and-set queued -> claimed for ``worker_id``; False when the race is lost."""
        job = self.job(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            return False
        return self._transition(job, JobStatus.CLAIMED, claimed_by=worker_id) is not None

    def mark_accepted(self, job_id: str, worker_id: str) -> bool:
        now = utc_now()
        cursor = self._conn.execute(
            "UPDATE jobs SET accepted_at = ?, updated_at = ? "
            "WHERE id = ? AND status = 'claimed' AND claimed_by = ?",
            (now, now, job_id, worker_id),
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
            return self._transition(
                job, JobStatus.QUEUED, claimed_by=None, accepted_at=None, error=kept_error
            )
        return self._end_attempt(job, error or "worker session lost", retryable=True)

    def fail(self, job_id: str, worker_id: str, error: str, *, retryable: bool) -> JobRecord | None:
        """Record a failed attempt; requeue or fail per ``status_after_failure``."""
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
        return self._transition(
            job,
            JobStatus.DONE,
            result=result_json,
            asset_path=asset_path,
            prompt=prompt,
            error=None,
            finished_at=utc_now(),
        )

    def fail_unofferable(self, job_id: str, error: str) -> JobRecord | None:
        """queued -> failed for a job whose stored task can no longer be offered."""
        job = self.job(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            return None
        return self._transition(job, JobStatus.FAILED, error=error, finished_at=utc_now())

    def release_orphaned_claims(self) -> int:
        """At startup no session exists: every claimed job goes back to the queue as it was."""
        cursor = self._conn.execute(
            "UPDATE jobs SET status = 'queued', claimed_by = NULL, accepted_at = NULL, "
            "updated_at = ? WHERE status = 'claimed'",
            (utc_now(),),
        )
        return cursor.rowcount

    def _claimed_by(self, job_id: str, worker_id: str) -> JobRecord | None:
        job = self.job(job_id)
        if job is None or job.status is not JobStatus.CLAIMED or job.claimed_by != worker_id:
            return None
        return job

    def _end_attempt(self, job: JobRecord, error: str, *, retryable: bool) -> JobRecord | None:
        attempts = job.attempts + 1
        target = status_after_failure(attempts, job.max_attempts, retryable=retryable)
        finished = utc_now() if target is JobStatus.FAILED else None
        return self._transition(
            job,
            target,
            attempts=attempts,
            error=error,
            claimed_by=None,
            accepted_at=None,
            finished_at=finished,
        )

    def _transition(self, job: JobRecord, target: JobStatus, **fields: Any) -> JobRecord | None:
        """CAS ``job`` from its current status and claimant to ``target`` plus ``fields``."""
        check_transition(job.id, job.status, target)
        columns = {"status": target.value, "updated_at": utc_now(), **fields}
        assignments = ", ".join(f"{name} = ?" for name in columns)
        cursor = self._conn.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = ? AND claimed_by IS ?",
            (*columns.values(), job.id, job.status.value, job.claimed_by),
        )
        if cursor.rowcount != 1:
            return None
        return self.job(job.id)

    # --- logs ----------------------------------------------------------------------------

    def insert_logs(self, worker_id: str, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        now = utc_now()
        rows = [(worker_id, e.ts, e.level, e.category, e.message, e.job_id, now) for e in entries]
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                "INSERT INTO logs (worker_id, ts, level, category, message, job_id, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def logs(
        self, *, worker_id: str | None = None, job_id: str | None = None, limit: int = 200
    ) -> list[LogRecord]:
        """The newest ``limit`` log lines (optionally of one worker / job), oldest first."""
        clauses: list[str] = []
        params: list[object] = []
        if worker_id is not None:
            clauses.append("worker_id = ?")
            params.append(worker_id)
        if job_id is not None:
            clauses.append("job_id = ?")
            params.append(job_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT * FROM logs {where} ORDER BY id DESC LIMIT ?", (*params, limit)
        ).fetchall()
        return [LogRecord(**dict(row)) for row in reversed(rows)]
