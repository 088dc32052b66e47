"""Workers and their registration requests: who may connect, and who asked to.

A request is ``pending`` until the operator (or ``--auto-approve``) decides; approving it
creates the worker row in the same transaction. Only hashes of secrets and tokens are
stored. Called synchronously from the event loop; knows nothing about sessions, sockets
or HTTP.
"""

from __future__ import annotations

import sqlite3

from localstudio.auth import new_id
from localstudio.records import (
    RegistrationRecord,
    WorkerRecord,
    registration_from_row,
    worker_from_row,
)
from localstudio.schema import transaction, utc_now


class WorkerRegistry:
    """Workers and registration requests in one database. Not thread-safe."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # --- workers -------------------------------------------------------------------------

    def get(self, worker_id: str) -> WorkerRecord | None:
        row = self._conn.execute("SELECT * FROM workers WHERE id = ?", (worker_id,)).fetchone()
        return None if row is None else worker_from_row(row)

    def all(self) -> list[WorkerRecord]:
        rows = self._conn.execute("SELECT * FROM workers ORDER BY created_at, id").fetchall()
        return [worker_from_row(row) for row in rows]

    def set_token(self, worker_id: str, token_hash: str) -> None:
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
        return None if row is None else registration_from_row(row)

    def pending_requests(self) -> list[RegistrationRecord]:
        rows = self._conn.execute(
            "SELECT * FROM registration_requests WHERE status = 'pending' ORDER BY created_at, id"
        ).fetchall()
        return [registration_from_row(row) for row in rows]

    def upsert_pending_request(
        self, install_id: str, secret_hash: str, capabilities_json: str, user_agent: str
    ) -> RegistrationRecord:
        """Create a pending request, or refresh the pending one of this install id.

        Refreshing replaces the secret hash: the newest poster holds the only secret the
        worker still has (a worker that lost its request id but kept its install id).
        """
        with transaction(self._conn):
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
        with transaction(self._conn):
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
        return self.request(request_id)

    def reject_request(self, request_id: str, reason: str) -> RegistrationRecord | None:
        """Reject a pending request; other states are returned as-is."""
        self._conn.execute(
            "UPDATE registration_requests SET status = 'rejected', reason = ?, decided_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (reason, utc_now(), request_id),
        )
        return self.request(request_id)
