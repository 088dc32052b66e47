"""The registration lifecycle of protocol.md §6.2 as a table, in the project's one
state-machine idiom (``protocol.state_machine``); pure. ``Registrar`` (``registration.py``)
applies one event per HTTP round trip; the data each phase carries (the request id, when
it was first seen, the rejection's reason, the worker id) stays on the registrar and in
the config, and ``Registrar.tick`` reports it as a ``RegistrationState`` value.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.state_machine import StateMachine


class RegistrationPhase(enum.Enum):
    PRISTINE = "pristine"  # no request outstanding
    PENDING = "pending"  # a request the operator has not decided yet
    APPROVED = "approved"  # credentials in the config: the session may start
    REJECTED = "rejected"  # only `register --reset` starts over


class RegistrationEvent(enum.Enum):
    REQUEST_ACCEPTED = "request_accepted"  # the studio took a register request
    REQUEST_FAILED = "request_failed"  # it did not (network, 4xx/5xx): try again later
    STILL_PENDING = "still_pending"  # a poll said pending, or failed
    FORGOTTEN = "forgotten"  # a poll said 404: the studio lost the request
    APPROVED = "approved"
    REJECTED = "rejected"


P, E = RegistrationPhase, RegistrationEvent

TRANSITIONS: Final[dict[tuple[RegistrationPhase, RegistrationEvent], RegistrationPhase]] = {
    (P.PRISTINE, E.REQUEST_ACCEPTED): P.PENDING,
    (P.PRISTINE, E.REQUEST_FAILED): P.PRISTINE,
    (P.PENDING, E.STILL_PENDING): P.PENDING,
    (P.PENDING, E.FORGOTTEN): P.PRISTINE,
    (P.PENDING, E.APPROVED): P.APPROVED,
    (P.PENDING, E.REJECTED): P.REJECTED,
}


def registration_machine(
    initial: RegistrationPhase,
) -> StateMachine[RegistrationPhase, RegistrationEvent]:
    """A machine starting where the saved config left off (credentials: approved; a request
    id with its secret: pending; else pristine)."""
    return StateMachine("registration", TRANSITIONS, initial)
