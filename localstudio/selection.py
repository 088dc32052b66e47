"""Which connected worker gets a queued job: the studio's ``pickWorkerForJob``, pure.

A candidate is eligible when its session is welcomed and open, it advertises
``autoEnabled``, it has free capacity under the studio's ``OfferRule``, it is not holding
off after a transient reject, the job's kind is in its ``taskKinds``, its
``vramThresholdGb`` is at least the job's ``vramGbEstimate``, and it has not refused this
job for good during this session. The earliest connected eligible candidate wins.

Free capacity is where the two offer rules differ: ``PER_CAPACITY`` (the default) lets a
worker hold as many offers and running jobs as its ``maxConcurrentJobs`` says (1 when it
says nothing); ``ONE_PER_WORKER`` is the cloud studio's rule (flows.md §3): a worker is
offered a job only when it holds none, so the next offer waits until its last one
completed, failed or was rejected, whatever it advertises. No I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar, assert_never

from protocol.studio import Capabilities


class OfferRule(enum.Enum):
    """How many jobs (offered or running) one worker may hold at once."""

    PER_CAPACITY = "per-capacity"  # up to its advertised maxConcurrentJobs
    ONE_PER_WORKER = "one-per-worker"  # one, and only to an idle worker (the cloud studio)


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


def capacity_of(capabilities: Capabilities, rule: OfferRule = OfferRule.PER_CAPACITY) -> int:
    """How many jobs a worker may hold at once under ``rule``: ``maxConcurrentJobs`` if
    sane (else 1) per capacity, always 1 with one offer per worker."""
    match rule:
        case OfferRule.ONE_PER_WORKER:
            return 1
        case OfferRule.PER_CAPACITY:
            advertised = capabilities.max_concurrent_jobs
            if isinstance(advertised, int) and advertised >= 1:
                return advertised
            return 1
        case _:
            assert_never(rule)


def has_free_capacity(candidate: Candidate, rule: OfferRule = OfferRule.PER_CAPACITY) -> bool:
    """Whether the candidate could take one more offer right now (job aside)."""
    caps = candidate.capabilities
    if caps is None or not candidate.accepts_offers or candidate.held_off:
        return False
    return caps.auto_enabled and candidate.in_flight < capacity_of(caps, rule)


def is_eligible(
    job: JobNeeds, candidate: Candidate, rule: OfferRule = OfferRule.PER_CAPACITY
) -> bool:
    """Whether ``candidate`` may be offered ``job`` now (the module docstring's rules)."""
    if not has_free_capacity(candidate, rule) or candidate.has_declined(job.job_id):
        return False
    caps = candidate.capabilities
    assert caps is not None  # has_free_capacity checked it
    return job.kind in caps.task_kinds and caps.vram_threshold_gb >= job.vram_gb_estimate


def pick_worker(
    job: JobNeeds, candidates: Iterable[C], rule: OfferRule = OfferRule.PER_CAPACITY
) -> C | None:
    """The earliest connected eligible candidate, or None when nobody can take the job."""
    eligible = [c for c in candidates if is_eligible(job, c, rule)]
    if not eligible:
        return None
    return min(eligible, key=lambda c: c.connected_seq)
