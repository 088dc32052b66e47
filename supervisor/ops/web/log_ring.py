"""The last ``LOG_LINES`` log records, kept in memory for the status page.

A logging handler on the root logger, so it sees what the operator's terminal sees (every
lane's lines, the hosts' output, the supervisor's own); each line gets a sequence number so
the page asks only for what it has not shown yet. A record's text is rendered once, when it
is logged; secrets are masked when the page reads them (``secret_mask``), because a token
may be learnt after the line that holds it was logged. It keeps no traceback: the type and
message of an exception only.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import msgspec

from supervisor.lanes.context import record_lane

LOG_LINES: Final = 1000


class LogLine(msgspec.Struct):
    seq: int
    ts: float  # Unix time
    level: str  # debug, info, warning, error, critical
    logger: str
    message: str
    lane: str | None = None
    job_id: str | None = None


class LogRing(logging.Handler):
    def __init__(self, capacity: int = LOG_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[LogLine] = deque(maxlen=capacity)
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        # ``Handler.handle`` holds this handler's lock here: records from threads (a
        # host's output reader) get their numbers in order.
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message = f"{message} ({type(exc).__name__}: {exc})"
            job_id = getattr(record, "job_id", None)
            self._seq += 1
            self.lines.append(
                LogLine(
                    self._seq,
                    record.created,
                    record.levelname.lower(),
                    record.name,
                    message,
                    record_lane(record),
                    job_id if isinstance(job_id, str) else None,
                )
            )
        except Exception:
            self.handleError(record)

    def since(self, after: int, min_level: int = logging.DEBUG) -> list[LogLine]:
        """Lines numbered above ``after`` at ``min_level`` or above, oldest first."""
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            lines = list(self.lines)
        return [
            line
            for line in lines
            if line.seq > after and logging.getLevelName(line.level.upper()) >= min_level
        ]
