"""The lifecycle of one engine slot as a table: states, events and the legal transitions.

Pure: no processes, no clock. ``slot_machine`` moves along the table or raises
``IllegalTransition`` and changes nothing (``protocol.state_machine``), so a bug in the slot
core shows up as an error instead of a slot in a state nobody planned for. Only
``slot_core.SlotCore`` applies events to it.
"""

from __future__ import annotations

import enum
from typing import Final, assert_never

from protocol.state_machine import IllegalTransition, StateMachine


class SlotState(enum.Enum):
    STARTING = "starting"  # host spawned, waiting for its Ready
    PROVING = "proving"  # up after a loss its job may have caused: probed before any work
    READY = "ready"  # idle, may take a job
    BUSY = "busy"  # running a job
    DRAINING = "draining"  # finishing its job before a stop (shutdown)
    RESTARTING = "restarting"  # host gone (or being recycled); backing off before a respawn
    FAILED = "failed"  # parked after a crash loop until a cool-down passes
    STOPPED = "stopped"  # final


class SlotEvent(enum.Enum):
    SPAWNED = "spawned"
    READY = "ready"
    PROBE = "probe"  # ready, but the last loss is pending (loss_ledger): prove the host
    PROVEN = "proven"  # its probe passed: the pending loss was the job's
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
    (S.STARTING, E.PROBE): S.PROVING,
    (S.PROVING, E.PROVEN): S.READY,
    (S.PROVING, E.HOST_LOST): S.RESTARTING,
    (S.PROVING, E.RECYCLE): S.RESTARTING,
    (S.PROVING, E.DRAIN): S.STOPPED,
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


def events_to_stop(state: SlotState) -> tuple[SlotEvent, ...]:
    """The events that end a slot in STOPPED from ``state`` (its driver's loop is over)."""
    match state:
        case SlotState.READY | SlotState.BUSY:
            return (SlotEvent.DRAIN, SlotEvent.STOPPED)
        case SlotState.DRAINING:
            return (SlotEvent.STOPPED,)
        case SlotState.STARTING | SlotState.PROVING | SlotState.RESTARTING | SlotState.FAILED:
            return (SlotEvent.DRAIN,)
        case SlotState.STOPPED:
            return ()
        case _:
            assert_never(state)


__all__ = [
    "INITIAL",
    "TRANSITIONS",
    "IllegalTransition",
    "SlotEvent",
    "SlotState",
    "events_to_stop",
    "slot_machine",
]
