"""The registration phase table (protocol.md §6.2): every legal move lands where planned,
every other (phase, event) pair raises and changes nothing."""

from __future__ import annotations

import itertools

import pytest

from protocol.state_machine import IllegalTransition
from supervisor.studio.registration_state import (
    TRANSITIONS,
    RegistrationEvent,
    RegistrationPhase,
    registration_machine,
)

P, E = RegistrationPhase, RegistrationEvent

# Written out independently of the module so a change to the table is a deliberate one.
EXPECTED = {
    (P.PRISTINE, E.REQUEST_ACCEPTED): P.PENDING,
    (P.PRISTINE, E.REQUEST_FAILED): P.PRISTINE,
    (P.PENDING, E.STILL_PENDING): P.PENDING,
    (P.PENDING, E.FORGOTTEN): P.PRISTINE,
    (P.PENDING, E.APPROVED): P.APPROVED,
    (P.PENDING, E.REJECTED): P.REJECTED,
}
ILLEGAL = [pair for pair in itertools.product(P, E) if pair not in EXPECTED]


def test_table_is_exactly_the_planned_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()), ids=str)
def test_every_legal_move(pair: tuple[RegistrationPhase, RegistrationEvent], target) -> None:  # type: ignore[no-untyped-def]
    phase, event = pair
    machine = registration_machine(phase)
    assert machine.apply(event) is target


@pytest.mark.parametrize("pair", ILLEGAL, ids=str)
def test_every_illegal_move_raises_and_changes_nothing(
    pair: tuple[RegistrationPhase, RegistrationEvent],
) -> None:
    phase, event = pair
    machine = registration_machine(phase)
    with pytest.raises(IllegalTransition, match=f"registration: event {event.value}"):
        machine.apply(event)
    assert machine.state is phase


def test_approved_and_rejected_are_final() -> None:
    for phase in (P.APPROVED, P.REJECTED):
        assert not any(registration_machine(phase).allows(e) for e in E)
