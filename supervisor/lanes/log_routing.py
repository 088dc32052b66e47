"""Which lane's studio session ships a log record.

A record logged inside a lane's task carries the lane (``CURRENT_LANE``, a context
variable every task the lane starts inherits); a record about a job goes with the job's
lane; anything else is supervisor-wide (a host restart, the GPU governor) and goes to the
first lane still serving, so every line reaches the studio exactly once.
"""

from __future__ import annotations

import logging

from supervisor.lanes.context import record_lane
from supervisor.lanes.lane import Lane, lane_of_job
from supervisor.studio.log_queue import LogShipQueue, ShipHandler


def lane_for(record: logging.LogRecord, lanes: list[Lane]) -> Lane:
    name = record_lane(record)
    if name is not None:
        for lane in lanes:
            if lane.name == name:
                return lane
    job_id = getattr(record, "job_id", None)
    if isinstance(job_id, str):
        owner = lane_of_job(lanes, job_id)
        if owner is not None:
            return owner
    # Supervisor-wide: the first lane still serving ships it (a stopped one never would).
    return next((lane for lane in lanes if lane.exit_code is None), lanes[0])


class LaneShipHandler(ShipHandler):
    def __init__(self, lanes: list[Lane], level: int = logging.INFO) -> None:
        super().__init__(lanes[0].logs, level)
        self.lanes = lanes

    def queue_for(self, record: logging.LogRecord) -> LogShipQueue:
        return lane_for(record, self.lanes).logs
