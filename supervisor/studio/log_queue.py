"""The studio-bound log queue (protocol.md §2.9) and the logging handler that feeds it.

Bounded at 5000 entries: on overflow the oldest go and a warn entry says how many. A batch
that failed to send is put back ahead of newer entries. Records carry an optional
``job_id`` (``extra={"job_id": ...}``) that becomes the entry's ``jobId``.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime
from typing import Final

from protocol.studio import LogEntry, LogLevel

SHIP_QUEUE_MAX: Final = 5000


def utc_timestamp(when: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``: ``2026-05-16T00:00:00.000Z``."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class LogShipQueue:
    def __init__(self, capacity: int = SHIP_QUEUE_MAX) -> None:
        self.capacity = capacity
        self._entries: deque[LogEntry] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, entry: LogEntry) -> None:
        self._entries.append(entry)
        self._clip()

    def drain(self) -> list[LogEntry]:
        batch = list(self._entries)
        self._entries.clear()
        return batch

    def requeue(self, batch: list[LogEntry]) -> None:
        """Put an unsent batch back in front of what arrived since."""
        self._entries.extendleft(reversed(batch))
        self._clip()

    def _clip(self) -> None:
        over = len(self._entries) - self.capacity
        if over <= 0:
            return
        # Keep the newest; one slot goes to the marker that says what was lost.
        dropped = over + 1
        for _ in range(dropped):
            self._entries.popleft()
        self._entries.append(
            LogEntry(
                ts=utc_timestamp(),
                level="warn",
                category="logs",
                message=f"ship queue full ({self.capacity} entries); dropped {dropped} oldest",
            )
        )


_LEVELS: Final[dict[int, LogLevel]] = {
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


def _category(logger_name: str) -> str:
    if logger_name.startswith("engines"):
        return "engine"
    if logger_name.startswith("supervisor.session") or logger_name.startswith("supervisor.ws"):
        return "ws"
    return logger_name.rsplit(".", 1)[-1]


class ShipHandler(logging.Handler):
    """Copies INFO-and-above records into the ship queue (secrets never reach a record)."""

    def __init__(self, queue: LogShipQueue, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.queue = queue

    def queue_for(self, record: logging.LogRecord) -> LogShipQueue:
        """The queue a record goes to (one; a supervisor with lanes picks the lane's)."""
        del record
        return self.queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not kill the caller
            message = str(record.msg)
        job_id = getattr(record, "job_id", None)
        self.queue_for(record).push(
            LogEntry(
                ts=utc_timestamp(datetime.fromtimestamp(record.created, UTC)),
                level=_LEVELS.get(record.levelno, "info"),
                category=_category(record.name),
                message=message,
                job_id=job_id if isinstance(job_id, str) else None,
            )
        )
