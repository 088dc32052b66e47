"""The job lifecycle of the local studio: states, the transition table and the policies.

Pure: no I/O, no clock. The store refuses any status change this table does not list
(``IllegalJobTransitionError``), and the dispatcher asks the functions below what a reject,
a failure or a lost session does to a job, so the rules live in one place::

    queued  --offer (CAS)-------------------------------> claimed
    claimed --reject / lost session / retryable fail----> queued
    claimed --non-retryable fail / attempts exhausted---> failed
    claimed --completeJson / multipart upload-----------> done
    queued  --stored task no longer decodes-------------> failed
"""

from __future__ import annotations

import enum
import re
from typing import Final

from localstudio.errors import IllegalJobTransitionError

DEFAULT_MAX_ATTEMPTS: Final = 3
_TRANSIENT_REASON: Final = re.compile(r"busy|paused", re.IGNORECASE)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


TERMINAL: Final = frozenset({JobStatus.DONE, JobStatus.FAILED})

TRANSITIONS: Final[dict[JobStatus, frozenset[JobStatus]]] = {
    JobStatus.QUEUED: frozenset({JobStatus.CLAIMED, JobStatus.FAILED}),
    JobStatus.CLAIMED: frozenset({JobStatus.QUEUED, JobStatus.DONE, JobStatus.FAILED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
}


def check_transition(job_id: str, current: JobStatus, target: JobStatus) -> None:
    """Raise IllegalJobTransitionError unless the table allows ``current -> target``."""
    if target not in TRANSITIONS[current]:
        raise IllegalJobTransitionError(job_id, current.value, target.value)


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


def status_after_failure(attempts: int, max_attempts: int, *, retryable: bool) -> JobStatus:
    """Where a job goes after a counted attempt ended badly.

    ``attempts`` already includes the attempt that just ended. Non-retryable failures
    are terminal at once; retryable ones requeue until ``attempts`` reaches
    ``max_attempts``.
    """
    if not retryable or attempts >= max_attempts:
        return JobStatus.FAILED
    return JobStatus.QUEUED
