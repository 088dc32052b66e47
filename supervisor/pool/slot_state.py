"""The lifecycle of one engine slot as a table: states, events and the legal transitions.

Pure: no processes, no clock. ``slot_machine`` moves along the table or raises
``IllegalTransition`` and changes nothing (``protocol.state_machine``), so a bug in the slot
core shows up as an error instead of a slot in a state nobody planned for. Only
``slot_core.SlotCore`` applies events to it.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.state_machine import IllegalTransition, StateMachine


class SlotState(enum.Enum):
    STARTING = "starting"  # host spawned, waiting for its Ready
    READY = "ready"  # idle, may take a job
    BUSY = "busy"  # running a job
    DRAINING = "draining"  # finishing its job before a stop (shutdown)
    RESTARTING = "restarting"  # host gone (or being recycled); backing off before a respawn
    FAILED = "failed"  # parked after a crash loop until a cool-down passes
    STOPPED = "stopped"  # final


class SlotEvent(enum.Enum):
    SPAWNED = "spawned"
    READY = "ready"
    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    HOST_LOST = "host_lost"  # exit, signal, missed heartbeats, deadline kill
    RECYCLE = "recycle"  # planned restart between jobs (leak guard)
    PARK = "park"  # crash loop detected
    DRAIN = "drain"
    STOPPED = "stopped"


S, E = SlotState, SlotEvent

TRANSITIONS: Final[dict[tuple[SlotState, SlotEvent], SlotState]] = {
    (S.STARTING, E.READY): S.READY,
    (S.STARTING, E.HOST_LOST): S.RESTARTING,
    (S.STARTING, E.DRAIN): S.STOPPED,
    (S.READY, E.JOB_STARTED): S.BUSY,
    (S.READY, E.HOST_LOST): S.RESTARTING,
    (S.READY, E.RECYCLE): S.RESTARTING,
    (S.READY, E.DRAIN): S.DRAINING,
    (S.BUSY, E.JOB_FINISHED): S.READY,
    (S.BUSY, E.HOST_LOST): S.RESTARTING,
    (S.BUSY, E.DRAIN): S.DRAINING,
    (S.DRAINING, E.JOB_FINISHED): S.DRAINING,
    (S.DRAINING, E.HOST_LOST): S.STOPPED,
    (S.DRAINING, E.STOPPED): S.STOPPED,
    (S.RESTARTING, E.SPAWNED): S.STARTING,
    (S.RESTARTING, E.PARK): S.FAILED,
    (S.RESTARTING, E.DRAIN): S.STOPPED,
    (S.FAILED, E.SPAWNED): S.STARTING,
    (S.FAILED, E.DRAIN): S.STOPPED,
}


INITIAL: Final = SlotState.RESTARTING  # so the first spawn is an ordinary event


def slot_machine(slot_id: str) -> StateMachine[SlotState, SlotEvent]:
    return StateMachine(f"slot {slot_id}", TRANSITIONS, INITIAL)


__all__ = ["INITIAL", "TRANSITIONS", "IllegalTransition", "SlotEvent", "SlotState", "slot_machine"]
