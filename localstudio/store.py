"""The local studio's persistent state: one SQLite connection and the three parts over it.

``Store`` opens the database under the data dir and hands the same connection to the
job queue (``jobs``), the worker registry (``workers``) and the log archive (``logs``);
the queries live in those modules, the row types in ``records``. One connection means
one writer and statements applied in the order the event loop issues them. Not
thread-safe: use it from the thread that opened it. Knows nothing about sessions,
sockets or HTTP.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from localstudio.job_queue import JobQueue
from localstudio.log_archive import LogArchive
from localstudio.schema import open_database
from localstudio.worker_registry import WorkerRegistry


class Store:
    """The database, split by what it holds: ``jobs``, ``workers`` and ``logs``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.jobs = JobQueue(conn)
        self.workers = WorkerRegistry(conn)
        self.logs = LogArchive(conn)

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        return cls(open_database(data_dir))

    def close(self) -> None:
        self._conn.close()
