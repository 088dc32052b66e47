"""What the slot core hands out and keeps per job: the steps between host generations, the
fate of a lost job, the running job's times, the drain mode, and the GPU a slot is pinned
to (with the check that a host's ``Ready`` proves it computes there). Plain data."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from protocol import ipc
from supervisor.pool.job_clock import JobClock
from supervisor.pool.job_outcome import JobFailedOutcome
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.verdict import Verdict

REASON_SHUTDOWN: Final = "shutdown"
REASON_POISON: Final = "poison"


class Drain(enum.Enum):
    NO = "no"
    POLITE = "polite"  # finish the running job, then stop
    FORCED = "forced"  # stop now, failing a running job retryable


@dataclass
class JobRecord:
    job_id: str
    started: float
    clock: JobClock  # its deadline, its progress, its download
    attempt: int  # 1, or 2 for the one local retry after an out-of-memory failure


@dataclass(frozen=True)
class Spawn:
    """Start a new host generation now."""


@dataclass(frozen=True)
class Wait:
    """Nothing to do before ``until`` (monotonic), unless a drain is requested."""

    until: float


@dataclass(frozen=True)
class Stop:
    """The slot is done: leave the loop."""


NextStep = Spawn | Wait | Stop


@dataclass(frozen=True)
class LostJob:
    job_id: str
    outcome: JobFailedOutcome


@dataclass(frozen=True)
class Settled:
    """What the end of a host generation meant: the job it took down, whether the slot is
    now parked, and the job (if any) whose pending loss this generation did not prove."""

    lost: LostJob | None
    parked: bool
    unproven: str | None = None


@dataclass(frozen=True)
class ExpectedDevice:
    """The GPU a slot is pinned to, and whether its engine must compute there."""

    index: int  # engine@N
    name: str
    uuid: str
    must_compute_there: bool  # llama/sdcpp, or any engine on a simulated GPU

    def mismatch(self, compute: ipc.ComputeDevice) -> str | None:
        """Why a host's ``Ready`` shows it is not computing on this GPU, or None."""
        if not self.must_compute_there:
            return None
        where = f"GPU {self.index} ({self.name}, {self.uuid})"
        if compute.backend == "cpu":
            return (
                f"came up on the CPU, not on {where}: its inference library was built "
                "without GPU support (see the operator guide, GPU builds)"
            )
        if compute.uuid and compute.uuid != self.uuid:
            seen = f"{compute.name or 'another GPU'} ({compute.uuid})"
            return f"came up on {seen}, not on {where}"
        return None


def lost_job_failure(
    engine: str, slot_id: str, job: JobRecord, verdict: Verdict, poison: PoisonJobs
) -> JobFailedOutcome:
    """What a job becomes when its host is lost: retryable with the cause, unless the
    supervisor stopped (``shutdown``), or the job is poison already and the cause is one a
    job can be to blame for (final). Whether this loss is a strike is decided later
    (``loss_ledger``), once a fresh host proves itself."""
    job_id = job.job_id
    if verdict.final:
        return JobFailedOutcome(
            f"worker shut down before job {job_id} finished on the {engine} engine",
            True,
            REASON_SHUTDOWN,
        )
    text = f"{engine} engine host (slot {slot_id}) {verdict.detail} during job {job_id}"
    if verdict.strikes_job and poison.is_poison(job_id):
        return JobFailedOutcome(
            f"{text}; this job has already taken down an engine host "
            f"{poison.strikes_of(job_id)} times, so it is not retried",
            False,
            REASON_POISON,
        )
    return JobFailedOutcome(text, True, verdict.cause.value)
