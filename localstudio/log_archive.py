"""The log lines workers ship (``logBatch``), kept for the operator to read back.

Append-only: a batch is written in one transaction, reads return the newest lines oldest
first. Called synchronously from the event loop; knows nothing about sessions or HTTP.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from localstudio.records import LogRecord, log_from_row
from localstudio.schema import transaction, utc_now
from protocol.studio import LogEntry


class LogArchive:
    """Shipped worker logs in one database. Not thread-safe."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, worker_id: str, entries: Sequence[LogEntry]) -> None:
        if not entries:
            return
        now = utc_now()
        rows = [(worker_id, e.ts, e.level, e.category, e.message, e.job_id, now) for e in entries]
        # Append-only and nothing read first: a deferred BEGIN is enough.
        with transaction(self._conn, immediate=False):
            self._conn.executemany(
                "INSERT INTO logs (worker_id, ts, level, category, message, job_id, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def recent(
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
        return [log_from_row(row) for row in reversed(rows)]
