"""One worker's WebSocket session as the studio sees it: state, held jobs and outbox.

No socket here: the connection driver (``connection``) moves frames between the socket
and this object, and the dispatcher reads and changes it. Frames to the worker go
through an unbounded in-memory outbox so that anything (an HTTP submit, another
session's completion) can queue an offer without awaiting, and one writer task keeps
frames in order. Closing is a request in the same outbox: what was queued before it
is sent first. The lifecycle is a ``(state, event)`` table applied through
``protocol.state_machine`` (an event it does not list raises ``IllegalTransition``)::

    awaiting_hello --welcome: valid hello--> welcomed --close--> closing
    awaiting_hello --close-----------------> closing
"""

from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass
from typing import Final

import anyio

from localstudio.schema import utc_now
from protocol.state_machine import StateMachine
from protocol.studio import Capabilities, Error, WorkerOutbound, close_code_for_error


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    WELCOMED = "welcomed"
    CLOSING = "closing"


class SessionEvent(enum.Enum):
    WELCOME = "welcome"  # a hello with a valid token
    CLOSE = "close"  # a close is queued (replaced, refused, timed out, socket gone)


TRANSITIONS: Final[dict[tuple[SessionState, SessionEvent], SessionState]] = {
    (SessionState.AWAITING_HELLO, SessionEvent.WELCOME): SessionState.WELCOMED,
    (SessionState.AWAITING_HELLO, SessionEvent.CLOSE): SessionState.CLOSING,
    (SessionState.WELCOMED, SessionEvent.CLOSE): SessionState.CLOSING,
}

INITIAL: Final = SessionState.AWAITING_HELLO


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """Outbox item: close the socket with this code and reason, then stop writing."""

    code: int
    reason: str


Outgoing = WorkerOutbound | CloseRequest

# RFC 6455: a close frame's reason fits in 123 bytes of UTF-8.
MAX_CLOSE_REASON_BYTES: Final = 123


def clip_close_reason(reason: str) -> str:
    """``reason`` cut to what a close frame can carry, never mid-character."""
    raw = reason.encode()
    if len(raw) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return raw[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."


class WorkerSession:
    """A connected worker: what it advertised, what it holds, what to send it."""

    def __init__(self, worker_id: str, connected_seq: int, now: float) -> None:
        self.worker_id = worker_id
        self._connected_seq = connected_seq
        self._life = StateMachine(f"session of {worker_id}", TRANSITIONS, INITIAL)
        self._capabilities: Capabilities | None = None
        # job id -> accepted; an entry exists from the in-memory reservation (before the
        # database claim) until the job completes, fails, is rejected or is released.
        self.held: dict[str, bool] = {}
        self._held_off = False
        self._declined: set[str] = set()
        self.last_heartbeat = now
        self.connected_at = utc_now()
        self.last_heartbeat_at: str | None = None
        self._outbox_in, self.outbox = anyio.create_memory_object_stream[Outgoing](math.inf)

    @property
    def state(self) -> SessionState:
        return self._life.state

    @property
    def closing(self) -> bool:
        """True once a close is queued (a property, so callers re-read it after awaits)."""
        return self.state is SessionState.CLOSING

    # --- the selection.Candidate view ---------------------------------------------------

    @property
    def connected_seq(self) -> int:
        return self._connected_seq

    @property
    def accepts_offers(self) -> bool:
        return self.state is SessionState.WELCOMED

    @property
    def capabilities(self) -> Capabilities | None:
        return self._capabilities

    @property
    def in_flight(self) -> int:
        return len(self.held)

    @property
    def held_off(self) -> bool:
        return self._held_off

    def has_declined(self, job_id: str) -> bool:
        return job_id in self._declined

    # --- changes ------------------------------------------------------------------------

    def welcome(self, capabilities: Capabilities, now: float) -> None:
        self._life.apply(SessionEvent.WELCOME)
        self.beat(capabilities, now)

    def beat(self, capabilities: Capabilities, now: float) -> None:
        """A heartbeat (or the hello): fresh capabilities, and offers may flow again."""
        self._capabilities = capabilities
        self.last_heartbeat = now
        self.last_heartbeat_at = utc_now()
        self._held_off = False

    def hold_off(self) -> None:
        """After a transient reject: no offers until the next heartbeat or completion."""
        self._held_off = True

    def resume_offers(self) -> None:
        self._held_off = False

    def decline(self, job_id: str) -> None:
        """A non-transient reject: never offer this job to this session again."""
        self._declined.add(job_id)

    def send(self, frame: WorkerOutbound) -> None:
        """Queue a frame; dropped once the session is closing."""
        if self.state is not SessionState.CLOSING:
            self._put(frame)

    def close(self, code: int, reason: str) -> None:
        """Queue a close after whatever is already queued; later calls are no-ops."""
        if self.state is SessionState.CLOSING:
            return
        self._life.apply(SessionEvent.CLOSE)
        self._put(CloseRequest(code, clip_close_reason(reason)))

    def close_with_error(self, code: str, message: str) -> None:
        """Send ``error{code, message}`` then close with the code the studio pairs with it."""
        if self.state is SessionState.CLOSING:
            return
        self._put(Error(code=code, message=message))
        self.close(close_code_for_error(code), message)

    def close_streams(self) -> None:
        self._outbox_in.close()
        self.outbox.close()

    def _put(self, item: Outgoing) -> None:
        # A closed outbox means the writer is gone: the socket is closed already.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._outbox_in.send_nowait(item)
