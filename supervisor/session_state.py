"""The studio session's lifecycle as a table (pure; no sockets, no clock), in the project's
one state-machine idiom (``protocol.state_machine``). Shared vocabulary: the session drives
it, ``WorkerState`` holds it, status and metrics read it."""

from __future__ import annotations

import enum
from typing import Final

from protocol.state_machine import StateMachine


class SessionPhase(enum.Enum):
    WAITING_CREDENTIALS = "waiting_credentials"
    CONNECTING = "connecting"
    AWAITING_WELCOME = "awaiting_welcome"
    WELCOMED = "welcomed"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"


class SessionEvent(enum.Enum):
    CONNECT = "connect"
    CONNECTED = "connected"
    WELCOMED = "welcomed"
    LOST = "lost"
    STOP = "stop"


P, E = SessionPhase, SessionEvent

TRANSITIONS: Final[dict[tuple[SessionPhase, SessionEvent], SessionPhase]] = {
    (P.WAITING_CREDENTIALS, E.CONNECT): P.CONNECTING,
    (P.CONNECTING, E.CONNECTED): P.AWAITING_WELCOME,
    (P.CONNECTING, E.LOST): P.BACKING_OFF,
    (P.AWAITING_WELCOME, E.WELCOMED): P.WELCOMED,
    (P.AWAITING_WELCOME, E.LOST): P.BACKING_OFF,
    (P.WELCOMED, E.LOST): P.BACKING_OFF,
    (P.BACKING_OFF, E.CONNECT): P.CONNECTING,
    # Stopping is legal from every phase but the last.
    **{(phase, E.STOP): P.STOPPED for phase in P if phase is not P.STOPPED},
}
INITIAL: Final = SessionPhase.WAITING_CREDENTIALS


def session_machine() -> StateMachine[SessionPhase, SessionEvent]:
    return StateMachine("session", TRANSITIONS, INITIAL)
