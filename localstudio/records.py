"""Rows of the local studio's database as typed, immutable records, and the row readers.

One dataclass per table (plus ``NewJob``, a validated submission before it has an id).
JSON columns hold the wire encoding (camelCase) of the protocol structs and keep it: the
records carry the text, the views decode it. No queries here and no SQL beyond the
column names the readers rename.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from localstudio.jobs import JobStatus


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


def job_from_row(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    values["status"] = JobStatus(values["status"])
    values["task_json"] = values.pop("task")
    values["model_source_json"] = values.pop("model_source")
    values["result_json"] = values.pop("result")
    return JobRecord(**values)


def worker_from_row(row: sqlite3.Row) -> WorkerRecord:
    values = dict(row)
    values["capabilities_json"] = values.pop("capabilities")
    return WorkerRecord(**values)


def registration_from_row(row: sqlite3.Row) -> RegistrationRecord:
    values = dict(row)
    values["capabilities_json"] = values.pop("capabilities")
    return RegistrationRecord(**values)


def log_from_row(row: sqlite3.Row) -> LogRecord:
    return LogRecord(**dict(row))
