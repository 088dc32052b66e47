"""The job lifecycle of the local studio: states, events, the transition table and the policies.

Pure: no I/O, no clock. The job queue applies every status change as an event through
``job_machine`` (``protocol.state_machine``), so an event the table does not list raises
``IllegalTransition`` before anything is written; the dispatcher asks the functions below
what a reject or a failure means, so the rules live in one place::

    queued  --claim: offered to one worker (CAS)--------------> claimed
    queued  --unofferable: stored task no longer decodes------> failed
    claimed --release: reject, unanswered offer, restart-------> queued   (no attempt)
    claimed --retry: retryable attempt ended, attempts left----> queued   (attempt counted)
    claimed --give_up: final failure or attempts exhausted-----> failed   (attempt counted)
    claimed --complete: completeJson or multipart upload-------> done
"""

from __future__ import annotations

import enum
import re
from typing import Final

from protocol.state_machine import StateMachine

DEFAULT_MAX_ATTEMPTS: Final = 3
_TRANSIENT_REASON: Final = re.compile(r"busy|paused", re.IGNORECASE)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


class JobEvent(enum.Enum):
    CLAIM = "claim"
    UNOFFERABLE = "unofferable"
    RELEASE = "release"
    RETRY = "retry"
    GIVE_UP = "give_up"
    COMPLETE = "complete"


S, E = JobStatus, JobEvent

TRANSITIONS: Final[dict[tuple[JobStatus, JobEvent], JobStatus]] = {
    (S.QUEUED, E.CLAIM): S.CLAIMED,
    (S.QUEUED, E.UNOFFERABLE): S.FAILED,
    (S.CLAIMED, E.RELEASE): S.QUEUED,
    (S.CLAIMED, E.RETRY): S.QUEUED,
    (S.CLAIMED, E.GIVE_UP): S.FAILED,
    (S.CLAIMED, E.COMPLETE): S.DONE,
}

INITIAL: Final = JobStatus.QUEUED
TERMINAL: Final = frozenset({JobStatus.DONE, JobStatus.FAILED})


def job_machine(job_id: str, status: JobStatus) -> StateMachine[JobStatus, JobEvent]:
    """The lifecycle of ``job_id`` as stored now (the database holds the state between events)."""
    return StateMachine(f"job {job_id}", TRANSITIONS, status)


def is_transient_reject(code: str | None, reason: str) -> bool:
    """Whether a ``reject`` means "not now" rather than "not this job".

    Transient (requeue, no attempt counted, no immediate re-offer to that worker):
    - ``code`` is ``busy`` or ``paused`` (workers since 0.4.6);
    - no ``code`` and the free-text reason mentions busy or paused (older workers).
    Everything else is non-transient: the claim is released and the job goes elsewhere.
    """
    if code is not None:
        return code in ("busy", "paused")
    return _TRANSIENT_REASON.search(reason) is not None


def event_after_failure(attempts: int, max_attempts: int, *, retryable: bool) -> JobEvent:
    """What a counted attempt that ended badly does to its job.

    ``attempts`` already includes the attempt that just ended. Non-retryable failures
    give up at once (``GIVE_UP``); retryable ones go back to the queue (``RETRY``) until
    ``attempts`` reaches ``max_attempts``.
    """
    if not retryable or attempts >= max_attempts:
        return JobEvent.GIVE_UP
    return JobEvent.RETRY
