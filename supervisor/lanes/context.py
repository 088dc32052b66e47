"""The lane a log record belongs to: a context variable each lane's task sets (when there
are several lanes), inherited by every task it starts, so its log lines ship to its own
studio session and show the lane on the operator's terminal."""

from __future__ import annotations

import contextvars
import logging

CURRENT_LANE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "studio_worker_lane", default=None
)


def record_lane(record: logging.LogRecord) -> str | None:
    """The lane named on the record (``extra={"lane": ...}``), else the logging task's."""
    name = getattr(record, "lane", None)
    return name if isinstance(name, str) else CURRENT_LANE.get()


class LaneTagFilter(logging.Filter):
    """Gives every record ``lane`` and ``lane_tag`` for the operator's log formats:
    ``[gpu1] `` inside a lane's task when there are several lanes, else empty."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record_lane(record)
        record.lane = name
        record.lane_tag = f"[{name}] " if name else ""
        return True
