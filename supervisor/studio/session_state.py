"""The studio session's lifecycle as a table (pure; no sockets, no clock)."""

from __future__ import annotations

import enum
from typing import Final


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
}
# Stopping is legal from every phase but the last.
TRANSITIONS.update({(p, E.STOP): P.STOPPED for p in P if p is not P.STOPPED})


class IllegalSessionTransition(RuntimeError):
    pass


class SessionLifecycle:
    def __init__(self) -> None:
        self.phase = SessionPhase.WAITING_CREDENTIALS

    def apply(self, event: SessionEvent) -> SessionPhase:
        nxt = TRANSITIONS.get((self.phase, event))
        if nxt is None:
            raise IllegalSessionTransition(
                f"session event {event.value} is illegal in phase {self.phase.value}"
            )
        self.phase = nxt
        return nxt
