"""The slot lifecycle table: every legal transition lands where planned, every other
(state, event) pair raises ``IllegalTransition`` and leaves the state alone."""

from __future__ import annotations

import itertools

import pytest

from protocol.state_machine import StateMachine
from supervisor.pool.slot_state import (
    INITIAL,
    TRANSITIONS,
    IllegalTransition,
    SlotEvent,
    SlotState,
    slot_machine,
)

S, E = SlotState, SlotEvent

# Written out independently of the module so a change to the table is a deliberate one.
EXPECTED: dict[tuple[SlotState, SlotEvent], SlotState] = {
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

ILLEGAL = [pair for pair in itertools.product(SlotState, SlotEvent) if pair not in EXPECTED]


def at(state: SlotState) -> StateMachine[SlotState, SlotEvent]:
    life = slot_machine("sdcpp-gpu0-0")
    life.state = state
    return life


def test_table_is_exactly_the_planned_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_starts_restarting_so_the_first_spawn_is_an_event() -> None:
    assert slot_machine("s").state is SlotState.RESTARTING is INITIAL


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()), ids=str)
def test_every_legal_transition(pair: tuple[SlotState, SlotEvent], target: SlotState) -> None:
    state, event = pair
    life = at(state)
    assert life.allows(event)
    assert life.apply(event) is target
    assert life.state is target


@pytest.mark.parametrize("pair", ILLEGAL, ids=str)
def test_every_illegal_transition_raises_and_changes_nothing(
    pair: tuple[SlotState, SlotEvent],
) -> None:
    state, event = pair
    life = at(state)
    assert not life.allows(event)
    with pytest.raises(IllegalTransition) as info:
        life.apply(event)
    assert life.state is state
    assert info.value.state is state
    assert info.value.event is event
    assert str(info.value) == (
        f"slot sdcpp-gpu0-0: event {event.value} is illegal in state {state.value}"
    )


def test_stopped_is_final() -> None:
    assert not any(at(S.STOPPED).allows(e) for e in SlotEvent)


def test_every_state_but_stopped_can_be_drained_or_lost_towards_a_stop() -> None:
    for state in SlotState:
        if state is S.STOPPED:
            continue
        life = at(state)
        for _ in range(3):
            if life.state is S.STOPPED:
                break
            life.apply(E.DRAIN if life.allows(E.DRAIN) else E.STOPPED)
        assert life.state is S.STOPPED, state


def test_a_normal_life() -> None:
    life = slot_machine("synthetic-default-0")
    steps = [
        (E.SPAWNED, S.STARTING),
        (E.READY, S.READY),
        (E.JOB_STARTED, S.BUSY),
        (E.JOB_FINISHED, S.READY),
        (E.RECYCLE, S.RESTARTING),
        (E.SPAWNED, S.STARTING),
        (E.READY, S.READY),
        (E.JOB_STARTED, S.BUSY),
        (E.HOST_LOST, S.RESTARTING),
        (E.SPAWNED, S.STARTING),
        (E.PROBE, S.PROVING),
        (E.PROVEN, S.READY),
        (E.JOB_STARTED, S.BUSY),
        (E.HOST_LOST, S.RESTARTING),
        (E.PARK, S.FAILED),
        (E.SPAWNED, S.STARTING),
        (E.READY, S.READY),
        (E.JOB_STARTED, S.BUSY),
        (E.DRAIN, S.DRAINING),
        (E.JOB_FINISHED, S.DRAINING),
        (E.STOPPED, S.STOPPED),
    ]
    for event, expected in steps:
        assert life.apply(event) is expected


def test_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
