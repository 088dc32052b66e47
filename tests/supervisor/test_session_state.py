"""The studio session lifecycle table (protocol.md §2.6-§2.7): legal transitions land where
planned, illegal ones raise and change nothing, stop is legal from every live phase."""

from __future__ import annotations

import itertools

import pytest

from protocol.state_machine import IllegalTransition, StateMachine
from supervisor.session_state import (
    INITIAL,
    TRANSITIONS,
    SessionEvent,
    SessionPhase,
    session_machine,
)

P, E = SessionPhase, SessionEvent

EXPECTED: dict[tuple[SessionPhase, SessionEvent], SessionPhase] = {
    (P.WAITING_CREDENTIALS, E.CONNECT): P.CONNECTING,
    (P.CONNECTING, E.CONNECTED): P.AWAITING_WELCOME,
    (P.CONNECTING, E.LOST): P.BACKING_OFF,
    (P.AWAITING_WELCOME, E.WELCOMED): P.WELCOMED,
    (P.AWAITING_WELCOME, E.LOST): P.BACKING_OFF,
    (P.WELCOMED, E.LOST): P.BACKING_OFF,
    (P.BACKING_OFF, E.CONNECT): P.CONNECTING,
    (P.WAITING_CREDENTIALS, E.STOP): P.STOPPED,
    (P.CONNECTING, E.STOP): P.STOPPED,
    (P.AWAITING_WELCOME, E.STOP): P.STOPPED,
    (P.WELCOMED, E.STOP): P.STOPPED,
    (P.BACKING_OFF, E.STOP): P.STOPPED,
}

ILLEGAL = [pair for pair in itertools.product(SessionPhase, SessionEvent) if pair not in EXPECTED]


def at(phase: SessionPhase) -> StateMachine[SessionPhase, SessionEvent]:
    life = session_machine()
    life.state = phase
    return life


def test_table_is_exactly_the_planned_one() -> None:
    assert TRANSITIONS == EXPECTED


def test_starts_waiting_for_credentials() -> None:
    assert session_machine().state is SessionPhase.WAITING_CREDENTIALS is INITIAL


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()), ids=str)
def test_every_legal_transition(
    pair: tuple[SessionPhase, SessionEvent], target: SessionPhase
) -> None:
    phase, event = pair
    life = at(phase)
    assert life.apply(event) is target
    assert life.state is target


@pytest.mark.parametrize("pair", ILLEGAL, ids=str)
def test_every_illegal_transition_raises_and_changes_nothing(
    pair: tuple[SessionPhase, SessionEvent],
) -> None:
    phase, event = pair
    life = at(phase)
    with pytest.raises(IllegalTransition, match=f"{event.value}.*{phase.value}"):
        life.apply(event)
    assert life.state is phase


def test_nothing_happens_after_stop() -> None:
    life = at(P.STOPPED)
    for event in SessionEvent:
        with pytest.raises(IllegalTransition):
            life.apply(event)
    assert life.state is P.STOPPED


def test_welcome_is_needed_before_the_session_counts_as_up() -> None:
    life = session_machine()
    life.apply(E.CONNECT)
    with pytest.raises(IllegalTransition):
        life.apply(E.WELCOMED)  # no welcome before the socket is up
    life.apply(E.CONNECTED)
    assert life.state is P.AWAITING_WELCOME


def test_reconnect_cycle() -> None:
    life = session_machine()
    for event, phase in [
        (E.CONNECT, P.CONNECTING),
        (E.LOST, P.BACKING_OFF),  # connect failure
        (E.CONNECT, P.CONNECTING),
        (E.CONNECTED, P.AWAITING_WELCOME),
        (E.WELCOMED, P.WELCOMED),
        (E.LOST, P.BACKING_OFF),
        (E.CONNECT, P.CONNECTING),
        (E.STOP, P.STOPPED),
    ]:
        assert life.apply(event) is phase
