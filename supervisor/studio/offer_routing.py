"""What to do with an offer: one pure decision, from the claim, the slots and the worker's
state to reject / refuse / run on one named slot.

The order is protocol.md §2.8's with this worker's pool: shutting down or paused ->
refusal of what this worker can never run (missing engine, a kind the engine does not
serve, a poison job) -> the slot that serves it now, or busy. Routing is strictly by
``modelSource.engine``; there is no fallback to another engine, synthetic least of all.
The caller reserves the chosen slot in the same step (no ``await`` between the decision and
``EnginePool.reserve``), so nothing else can take it meanwhile.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engines.catalog import ENGINES, engine_for_source, install_hint
from protocol.studio import JobOfferClaim, RejectCode
from protocol.tasks import task_kind
from supervisor.pool.engine_pool import SlotView

REASON_PAUSED = "worker paused by operator"
REASON_SHUTTING_DOWN = "worker shutting down"


class RejectCause(enum.StrEnum):
    """Why an offer is rejected (not accepted at all)."""

    SHUTTING_DOWN = "shutting_down"
    PAUSED = "paused"
    BUSY = "busy"


class RefuseCause(enum.StrEnum):
    """Why an offer is accepted and failed ``retryable: false`` at once."""

    MISSING_ENGINE = "missing_engine"
    UNSUPPORTED_KIND = "unsupported_kind"
    POISON = "poison"


@dataclass(frozen=True)
class RejectOffer:
    """``code`` busy/paused is transient: the studio requeues without counting an attempt."""

    reason: str
    code: RejectCode | None
    cause: RejectCause


@dataclass(frozen=True)
class RefuseOffer:
    """This worker can never run the job: accept it, then fail it ``retryable: false``."""

    error: str
    cause: RefuseCause


@dataclass(frozen=True)
class RunOn:
    """Accept and run the job on this slot."""

    slot_id: str
    engine: str


OfferDecision = RejectOffer | RefuseOffer | RunOn


@dataclass(frozen=True)
class WorkerFlags:
    paused: bool
    shutting_down: bool


def missing_engine_error(engine: str, model: str) -> str:
    """The §9.1 text for an offer whose engine this worker does not run."""
    hint = install_hint(engine)
    return (
        f"no `{engine}` engine compiled into this worker (model `{model}` requires it). "
        f"{hint[0].upper()}{hint[1:]}."
    )


def route_offer(
    claim: JobOfferClaim,
    *,
    worker: WorkerFlags,
    slots: Sequence[SlotView],
    is_poison: Callable[[str], bool],
) -> OfferDecision:
    if worker.shutting_down:
        return RejectOffer(REASON_SHUTTING_DOWN, "paused", RejectCause.SHUTTING_DOWN)
    if worker.paused:
        return RejectOffer(REASON_PAUSED, "paused", RejectCause.PAUSED)
    engine = engine_for_source(claim.model_source.engine)
    mine = [s for s in slots if s.engine == engine]
    if not mine:
        return RefuseOffer(missing_engine_error(engine, claim.model), RefuseCause.MISSING_ENGINE)
    kind = task_kind(claim.task)
    if kind not in ENGINES[engine].kinds:
        return RefuseOffer(
            f"{engine} engine cannot serve {kind} tasks", RefuseCause.UNSUPPORTED_KIND
        )
    if is_poison(claim.job_id):
        return RefuseOffer(
            f"job {claim.job_id} has already taken down an engine host twice on this worker; "
            "not running it again",
            RefuseCause.POISON,
        )
    for slot in mine:
        if slot.free:
            return RunOn(slot.slot_id, engine)
    return RejectOffer(
        f"worker already has an in-flight job on every {engine} slot", "busy", RejectCause.BUSY
    )


def fail_is_retryable(error: str, retryable: bool) -> bool:
    """Whether a failed job may be retried by the studio (protocol.md §2.8).

    Not retryable: an engine that cannot serve the task's kind (flagged by the host, or,
    for messages from older code, the text ``cannot serve``), a missing engine, a job that
    keeps crashing hosts. Everything else (download failure, engine crash, context
    overflow, upload failure) is retryable.
    """
    return retryable and "cannot serve" not in error
