"""Who pays for a lost engine host: the engine (the crash-loop guard) or its job (a poison
strike). Pure: the slot core tells it each ended host generation and each proof, with the
time, and it answers how long to back off, whether to park, and which job took a strike.

The crash-loop guard is for broken engines and drivers, poison is for bad jobs, and a loss
counts toward exactly one of them. Whether a job or the engine is to blame is not known at
the loss: with a broken driver every job crashes its host, and were each loss a strike the
slot would never park (and good jobs would be failed for good), while three bad jobs in a
row must not park the only slot. So a loss that a job may have caused (a crash while it ran,
not while it downloaded) counts toward the crash loop at once and is *pending*; if the fresh
host then proves itself (it comes up and passes a probe: the slot's ``proving`` state), the
loss becomes a strike for the job and leaves the crash-loop count. If the fresh host never
gets there (it dies, hangs, fails its probe, or is stopped first), the loss stays the
engine's and is no strike.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.pool.policies import CrashLoopDetector, PoisonJobs, backoff_s
from supervisor.pool.settings import PoolSettings


@dataclass(frozen=True)
class PendingLoss:
    job_id: str
    at: float  # its entry in the crash-loop window, taken back when the job is to blame


@dataclass(frozen=True)
class Charge:
    """What one ended host generation costs the slot."""

    unproven: str | None  # a job whose pending loss stays the engine's (no strike)
    backoff_s: float  # before the respawn
    park: bool  # the crash loop is full


@dataclass(frozen=True)
class Strike:
    """A pending loss became its job's: the job has now taken ``strikes`` hosts down."""

    job_id: str
    strikes: int
    limit: int  # strikes that make a job poison
    poison: bool


class LossLedger:
    def __init__(self, settings: PoolSettings, poison: PoisonJobs) -> None:
        self._settings = settings
        self._poison = poison
        self._window = CrashLoopDetector(settings.crash_loop_max, settings.crash_loop_window_s)
        self._attempt = 0  # consecutive crashes, for the backoff
        self.pending: PendingLoss | None = None

    @property
    def recent(self) -> int:
        """Losses in the crash-loop window now."""
        return self._window.recent

    def host_gone(self, now: float, *, crash: bool, suspect: str | None = None) -> Charge:
        """A host generation ended. ``crash``: the verdict counts toward the crash loop;
        ``suspect``: the job that may have caused it (the loss is pending until a fresh
        host proves itself). A loss still pending from before was not proven: it stays."""
        unproven = self.pending.job_id if self.pending is not None else None
        self.pending = None
        if not crash:
            self._attempt = 0
            return Charge(unproven, 0.0, park=False)
        self._attempt += 1
        s = self._settings
        delay = backoff_s(self._attempt, s.restart_backoff_base_s, s.restart_backoff_max_s)
        park = self._window.record(now)
        if suspect is not None:
            self.pending = PendingLoss(suspect, now)
        return Charge(unproven, delay, park)

    def proven(self) -> Strike | None:
        """The fresh host proved itself: the pending loss, if any, was its job's fault."""
        pending = self.pending
        if pending is None:
            return None
        self.pending = None
        self._window.forget(pending.at)
        self._attempt = 0  # the engine is sound: no reason to back off longer next time
        job_id = pending.job_id
        strikes = self._poison.record(job_id)
        return Strike(job_id, strikes, self._poison.strikes, self._poison.is_poison(job_id))

    def fresh_start(self) -> None:
        """A parked slot's cool-down is over: start with a clean crash history (a pending
        loss is still proven or not by the next host)."""
        self._window.reset()
        self._attempt = 0
