"""What to do with an offer, and whether a failure may be retried: pure functions.

``decide_offer`` applies the order of protocol.md §2.8 with this worker's pool: paused ->
refusal of what this worker can never run (missing engine, a kind the engine does not
serve, a poison job) -> busy (no free slot for that engine) -> run. Routing is strictly by
``modelSource.engine``; there is no fallback to another engine, synthetic least of all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engines.catalog import ENGINES, engine_for_source, install_hint
from protocol.studio import JobOfferClaim, RejectCode
from protocol.tasks import task_kind

REASON_PAUSED = "worker paused by operator"
REASON_SHUTTING_DOWN = "worker shutting down"


@dataclass(frozen=True)
class RejectOffer:
    """Transient: the studio requeues the job without counting an attempt."""

    reason: str
    code: RejectCode


@dataclass(frozen=True)
class RefuseOffer:
    """This worker can never run the job: accept it, then fail it ``retryable: false``."""

    error: str


@dataclass(frozen=True)
class RunOffer:
    engine: str


OfferDecision = RejectOffer | RefuseOffer | RunOffer


def missing_engine_error(engine: str, model: str) -> str:
    """The §9.1 text for an offer whose engine this worker does not run."""
    hint = install_hint(engine)
    return (
        f"no `{engine}` engine compiled into this worker (model `{model}` requires it). "
        f"{hint[0].upper()}{hint[1:]}."
    )


def decide_offer(
    claim: JobOfferClaim,
    *,
    paused: bool,
    shutting_down: bool,
    configured_engines: frozenset[str],
    free_slots: Callable[[str], int],
    is_poison: Callable[[str], bool],
) -> OfferDecision:
    if shutting_down:
        return RejectOffer(REASON_SHUTTING_DOWN, "paused")
    if paused:
        return RejectOffer(REASON_PAUSED, "paused")
    engine = engine_for_source(claim.model_source.engine)
    if engine not in configured_engines:
        return RefuseOffer(missing_engine_error(engine, claim.model))
    kind = task_kind(claim.task)
    if kind not in ENGINES[engine].kinds:
        return RefuseOffer(f"{engine} engine cannot serve {kind} tasks")
    if is_poison(claim.job_id):
        return RefuseOffer(
            f"job {claim.job_id} has already taken down an engine host twice on this worker; "
            "not running it again"
        )
    if free_slots(engine) < 1:
        return RejectOffer(f"worker already has an in-flight job on every {engine} slot", "busy")
    return RunOffer(engine)


def fail_is_retryable(error: str, retryable: bool) -> bool:
    """Whether a failed job may be retried by the studio (protocol.md §2.8).

    Not retryable: an engine that cannot serve the task's kind (flagged by the host, or,
    for messages from older code, the text ``cannot serve``), a missing engine, a job that
    keeps crashing hosts. Everything else (download failure, engine crash, context
    overflow, upload failure) is retryable.
    """
    return retryable and "cannot serve" not in error
