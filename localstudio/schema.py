"""The local studio's SQLite database: file layout, schema and opening it.

One database file ``<data_dir>/studio.sqlite3`` in WAL mode, opened in autocommit mode so
each single-statement update (the compare-and-set claims) is its own transaction;
multi-statement changes use ``BEGIN IMMEDIATE``. The schema version lives in
``PRAGMA user_version``; a database from a newer schema is refused rather than
misread. This module only creates and opens (and frames transactions); the queries live
in ``job_queue``, ``worker_registry`` and ``log_archive``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from localstudio.errors import StudioConfigError

DB_FILENAME: Final = "studio.sqlite3"
ASSETS_DIRNAME: Final = "assets"
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS workers (
    id                TEXT PRIMARY KEY,
    token_hash        TEXT,
    capabilities      TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    last_heartbeat_at TEXT
);
CREATE TABLE IF NOT EXISTS registration_requests (
    id           TEXT PRIMARY KEY,
    install_id   TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    user_agent   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason       TEXT,
    worker_id    TEXT REFERENCES workers(id),
    created_at   TEXT NOT NULL,
    decided_at   TEXT
);
CREATE INDEX IF NOT EXISTS registration_by_install
    ON registration_requests(install_id, status);
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'claimed', 'done', 'failed')),
    kind             TEXT NOT NULL,
    model            TEXT NOT NULL,
    game_id          TEXT NOT NULL,
    asset_name       TEXT NOT NULL,
    task             TEXT NOT NULL,
    model_source     TEXT NOT NULL,
    vram_gb_estimate REAL NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    claimed_by       TEXT,
    accepted_at      TEXT,
    error            TEXT,
    result           TEXT,
    asset_path       TEXT,
    prompt           TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    worker_id   TEXT NOT NULL,
    ts          TEXT NOT NULL,
    level       TEXT NOT NULL,
    category    TEXT NOT NULL,
    message     TEXT NOT NULL,
    job_id      TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_worker ON logs(worker_id, id);
"""


def utc_now() -> str:
    """Now as RFC 3339 UTC with milliseconds and ``Z`` (``2026-05-16T00:00:00.000Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prepare_data_dir(data_dir: Path) -> Path:
    """Create ``data_dir`` and its ``assets/`` (owner-only) and return the assets path."""
    if data_dir.exists() and not data_dir.is_dir():
        raise StudioConfigError(f"data dir {data_dir} exists and is not a directory")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    assets = data_dir / ASSETS_DIRNAME
    assets.mkdir(mode=0o700, exist_ok=True)
    return assets


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """One multi-statement transaction: committed when the block ends, rolled back when it
    raises. ``immediate`` takes the write lock at ``BEGIN`` (read-then-write changes)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def open_database(data_dir: Path) -> sqlite3.Connection:
    """Open (creating or upgrading) the database under ``data_dir``.

    The connection belongs to the thread that opened it (the event loop's).
    """
    conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StudioConfigError(
                f"{data_dir / DB_FILENAME} has schema version {version}; this local studio "
                f"understands up to {SCHEMA_VERSION}"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn
