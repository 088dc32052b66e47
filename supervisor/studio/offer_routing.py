"""What to do with an offer: one pure decision, from the claim, the slots, the GPU memory
picture and the worker's state to reject / refuse / run on one named slot.

The order is protocol.md §2.8's with this worker's pool: shutting down or paused ->
refusal of what this worker can never run (missing engine, a kind the engine does not
serve, a poison job) -> busy when no slot of the engine is free -> GPU admission
(``supervisor.gpu.admission``: the slot where the model is loaded, else where it fits,
else where the least must be unloaded; ``busy`` when it cannot fit now, a reject without a
code when no GPU here could ever hold it) -> run. Routing is strictly by
``modelSource.engine``; there is no fallback to another engine, synthetic least of all.
The caller reserves the chosen slot and memory in the same step (no ``await`` between the
decision and ``EnginePool.reserve``), so nothing else can take them meanwhile.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import assert_never

from engines.catalog import ENGINES, engine_for_source, install_hint
from engines.load_keys import load_key
from protocol.studio import JobOfferClaim, RejectCode
from protocol.tasks import task_kind
from supervisor.gpu.admission import Admitted, Unfit, admit
from supervisor.gpu.picture import UNGOVERNED, MemoryPicture
from supervisor.pool.engine_pool import SlotView

GIB = 2**30

REASON_PAUSED = "worker paused by operator"
REASON_SHUTTING_DOWN = "worker shutting down"


class RejectCause(enum.StrEnum):
    """Why an offer is rejected (not accepted at all)."""

    SHUTTING_DOWN = "shutting_down"
    PAUSED = "paused"
    BUSY = "busy"  # no free slot of the engine
    GPU_SUSPECT = "gpu_suspect"  # the free slots' GPUs wait for a health probe
    NO_ROOM = "no_room"  # the job's GPU memory does not fit now (busy slots, other processes)
    TOO_LARGE = "too_large"  # no GPU here could ever hold it: the studio offers it elsewhere
    OTHER_LANE = "other_lane"  # another lane of this supervisor serves the engine


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
    """Accept and run the job on this slot; ``need_bytes`` of GPU memory are reserved for
    its load (0 when the model is loaded there already, or the slot has no GPU)."""

    slot_id: str
    engine: str
    load_key: str = ""
    need_bytes: int = 0


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
    memory: MemoryPicture = UNGOVERNED,
    elsewhere: frozenset[str] = frozenset(),
) -> OfferDecision:
    """``slots`` and ``memory`` are the lane's; ``elsewhere`` the engines only other lanes
    of this supervisor serve (an offer for one is rejected without a code: the studio
    offers it to a worker that has the engine, that lane among them)."""
    if worker.shutting_down:
        return RejectOffer(REASON_SHUTTING_DOWN, "paused", RejectCause.SHUTTING_DOWN)
    if worker.paused:
        return RejectOffer(REASON_PAUSED, "paused", RejectCause.PAUSED)
    engine = engine_for_source(claim.model_source.engine)
    mine = [s for s in slots if s.engine == engine]
    if not mine and engine in elsewhere:
        return RejectOffer(
            f"this lane has no {engine} slot; another lane of this machine serves {engine}",
            None,
            RejectCause.OTHER_LANE,
        )
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
    free = [s for s in mine if s.free]
    if not free and any(s.gpu_suspect for s in mine):
        return RejectOffer(
            f"no {engine} slot is free, and some are on a suspect GPU that takes no offers "
            "until a health probe passes",
            "busy",
            RejectCause.GPU_SUSPECT,
        )
    if not free:
        return RejectOffer(
            f"worker already has an in-flight job on every {engine} slot", "busy", RejectCause.BUSY
        )
    if not memory.governed:
        return RunOn(free[0].slot_id, engine)
    key = load_key(engine, claim.model, claim.model_source, claim.task)
    need = memory.need(key, int(claim.vram_gb_estimate * GIB))
    admission = admit(engine, key, need, memory.slots, memory.devices, memory.max_warm_models)
    match admission:
        case Admitted():
            return RunOn(admission.slot_id, engine, key, admission.need_bytes)
        case Unfit(transient=True):
            return RejectOffer(admission.reason, "busy", RejectCause.NO_ROOM)
        case Unfit():
            return RejectOffer(admission.reason, None, RejectCause.TOO_LARGE)
        case _:
            assert_never(admission)


def fail_is_retryable(error: str, retryable: bool) -> bool:
    """Whether a failed job may be retried by the studio (protocol.md §2.8).

    Not retryable: an engine that cannot serve the task's kind (flagged by the host, or,
    for messages from older code, the text ``cannot serve``), a missing engine, a job that
    keeps crashing hosts. Everything else (download failure, engine crash, context
    overflow, upload failure) is retryable.
    """
    return retryable and "cannot serve" not in error
