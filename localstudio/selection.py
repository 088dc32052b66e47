"""Which connected worker gets a queued job: the studio's ``pickWorkerForJob``, pure.

A candidate is eligible when its session is welcomed and open, it advertises
``autoEnabled``, it has free capacity (offers in flight < ``maxConcurrentJobs`` when
advertised, else 1), it is not holding off after a transient reject, the job's kind is in
its ``taskKinds``, its ``vramThresholdGb`` is at least the job's ``vramGbEstimate``, and it
has not refused this job for good during this session. The earliest connected eligible
candidate wins. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from protocol.studio import Capabilities


@dataclass(frozen=True, slots=True)
class JobNeeds:
    """What selection needs to know about a queued job."""

    job_id: str
    kind: str
    vram_gb_estimate: float


class Candidate(Protocol):
    """The view of a worker session that selection reads (WorkerSession provides it)."""

    @property
    def connected_seq(self) -> int: ...
    @property
    def accepts_offers(self) -> bool: ...
    @property
    def capabilities(self) -> Capabilities | None: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def held_off(self) -> bool: ...
    def has_declined(self, job_id: str) -> bool: ...


C = TypeVar("C", bound=Candidate)


def capacity_of(capabilities: Capabilities) -> int:
    """How many offers a worker may hold at once: ``maxConcurrentJobs`` if sane, else 1."""
    advertised = capabilities.max_concurrent_jobs
    if isinstance(advertised, int) and advertised >= 1:
        return advertised
    return 1


def has_free_capacity(candidate: Candidate) -> bool:
    """Whether the candidate could take one more offer right now (job aside)."""
    caps = candidate.capabilities
    if caps is None or not candidate.accepts_offers or candidate.held_off:
        return False
    return caps.auto_enabled and candidate.in_flight < capacity_of(caps)


def is_eligible(job: JobNeeds, candidate: Candidate) -> bool:
    """Whether ``candidate`` may be offered ``job`` now (the module docstring's rules)."""
    if not has_free_capacity(candidate) or candidate.has_declined(job.job_id):
        return False
    caps = candidate.capabilities
    assert caps is not None  # has_free_capacity checked it
    return job.kind in caps.task_kinds and caps.vram_threshold_gb >= job.vram_gb_estimate


def pick_worker(job: JobNeeds, candidates: Iterable[C]) -> C | None:
    """The earliest connected eligible candidate, or None when nobody can take the job."""
    eligible = [c for c in candidates if is_eligible(job, c)]
    if not eligible:
        return None
    return min(eligible, key=lambda c: c.connected_seq)
