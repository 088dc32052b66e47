"""Everything that decides one slot's state, in one place, with no I/O (h11's rule).

``SlotCore`` takes events (a host spawned, a message from it, its exit, a clock tick, a
reservation, a drain request) and returns decisions (a ``Verdict`` that ends the host
generation, what happens to a job, when to respawn, a strike for a job). It owns the
lifecycle table (``slot_state``) and every fact the table depends on: the reservation, the
running job and its clocks (``job_clock``), draining, the recycle reason, the memory
baselines, parking, and who pays for each lost host (``loss_ledger``: the crash-loop guard
or the job). It has no event loop, no process and no socket: ``slot.Slot`` is the driver
that spawns hosts, moves bytes and sleeps, and asks this core what to do at every step.
Time is always an argument, so scenario tables test it without a clock.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from protocol import ipc
from supervisor.pool.job_clock import JobClock
from supervisor.pool.job_outcome import JobFailedOutcome
from supervisor.pool.leak_watch import LeakWatch
from supervisor.pool.liveness import liveness_verdict
from supervisor.pool.loss_ledger import LossLedger, Strike
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_state import SlotEvent, SlotState, events_to_stop, slot_machine
from supervisor.pool.slot_steps import (
    Drain,
    ExpectedDevice,
    JobRecord,
    LostJob,
    NextStep,
    Settled,
    Spawn,
    Stop,
    Wait,
    lost_job_failure,
)
from supervisor.pool.verdict import LossCause, Verdict

REASON_NOT_READY: Final = "not_ready"
# A host is up: a drain request may stop it at once (``planned_verdict`` says whether).
_HOST_UP: Final = frozenset(
    {SlotState.STARTING, SlotState.PROVING, SlotState.READY, SlotState.DRAINING}
)


class SlotCore:
    def __init__(self, slot_id: str, engine: str, settings: PoolSettings, poison: PoisonJobs):
        self.slot_id = slot_id
        self.engine = engine
        self.settings = settings
        self._poison = poison
        self._machine = slot_machine(slot_id)
        self._losses = LossLedger(settings, poison)
        self.generation = 0
        self.ready: ipc.Ready | None = None
        self.last_heartbeat: ipc.HostHeartbeat | None = None
        self.reserved_for: str | None = None  # the job an accept is on its way for
        self.job: JobRecord | None = None
        self.held_for: str | None = None  # a job waiting to retry here after an OOM
        self.drain = Drain.NO
        self.recycle_reason: str | None = None
        self.recycle_cause = LossCause.RECYCLE
        self.expected: ExpectedDevice | None = None  # the GPU this slot is pinned to
        self.jobs_done = 0
        self.restarts = 0
        self.restart_causes: Counter[LossCause] = Counter()
        self.last_exit: str | None = None
        self.parked_until: float | None = None
        self._resume_at = 0.0
        self._spawned_at = 0.0
        self._ready_at = 0.0
        self._last_beat_at = 0.0
        self._progress_seq = -1
        self._leaks = LeakWatch(settings.recycle)

    # --- views ----------------------------------------------------------------------------

    @property
    def state(self) -> SlotState:
        return self._machine.state

    @property
    def is_free(self) -> bool:
        """May be reserved for a new job right now."""
        return (
            self.state is SlotState.READY
            and self.reserved_for is None
            and self.job is None
            and self.held_for is None
            and self.drain is Drain.NO
            and self.recycle_reason is None
        )

    @property
    def is_idle(self) -> bool:
        """Between jobs: what the host keeps loaded may be unloaded."""
        return (
            self.state is SlotState.READY
            and self.reserved_for is None
            and self.job is None
            and self.held_for is None
        )

    @property
    def is_serving(self) -> bool:
        """Alive and advertising its models (ready or busy)."""
        return self.state in (SlotState.READY, SlotState.BUSY) and self.ready is not None

    def _apply(self, event: SlotEvent) -> None:
        self._machine.apply(event)

    # --- the host generation ----------------------------------------------------------------

    def next_step(self, now: float) -> NextStep:
        """What the driver does between host generations."""
        if self.drain is not Drain.NO:
            return Stop()
        if now < self._resume_at:
            return Wait(self._resume_at)
        if self.state is SlotState.FAILED:
            # The cool-down is over: a fresh start, with a clean crash history.
            self._losses.fresh_start()
            self.parked_until = None
        return Spawn()

    def spawned(self, now: float) -> None:
        self.generation += 1
        self.ready = None
        self.last_heartbeat = None
        self.recycle_reason = None
        self.recycle_cause = LossCause.RECYCLE
        self._leaks.reset()
        self._spawned_at = now
        self._apply(SlotEvent.SPAWNED)

    def ready_received(self, msg: ipc.Ready, *, authentic: bool, now: float) -> Verdict | None:
        if not authentic or msg.version != ipc.IPC_VERSION:
            return Verdict(
                LossCause.HANDSHAKE,
                f"sent a bad handshake (IPC version {msg.version}, expected {ipc.IPC_VERSION})",
            )
        if self.ready is not None:
            return None
        wrong = self.expected.mismatch(msg.compute) if self.expected is not None else None
        if wrong is not None:
            return Verdict(LossCause.WRONG_DEVICE, wrong)
        self.ready = msg
        self._last_beat_at = self._ready_at = now
        # After a loss its job may have caused, the host proves itself before any work.
        self._apply(SlotEvent.READY if self._losses.pending is None else SlotEvent.PROBE)
        return self.planned_verdict()

    @property
    def proving_for(self) -> str | None:
        """The job whose loss waits for this host's proof (``loss_ledger``)."""
        return None if self._losses.pending is None else self._losses.pending.job_id

    def probe_answered(self, ok: bool, detail: str) -> Strike | Verdict | None:
        """A probe result from the host: while proving, a pass makes the pending loss its
        job's (the strike, if any) and the slot ready; a failure ends the host."""
        if self.state is not SlotState.PROVING:
            return None  # the GPU health watch's probe (supervisor/gpu/health_watch.py)
        if not ok:
            return Verdict(LossCause.PROBE_FAILED, f"failed its probe after a loss ({detail})")
        strike = self._losses.proven()
        self._apply(SlotEvent.PROVEN)
        return strike

    def heartbeat_received(
        self, hb: ipc.HostHeartbeat, now: float, vram_bytes: int | None = None
    ) -> Verdict | None:
        """``vram_bytes``: the host's GPU memory now, as NVML reports it (None: unknown)."""
        self.last_heartbeat = hb
        self._last_beat_at = now
        job = self.job
        if job is not None and hb.job_id == job.job_id:
            job.clock.phase_seen(hb.state, now)
        if hb.progress_seq != self._progress_seq:
            self._progress_seq = hb.progress_seq
            if job is not None:
                job.clock.progress_at = now
        self._leaks.heartbeat(hb, vram_bytes)
        return self.planned_verdict()

    def progress_received(self, msg: ipc.Progress, now: float) -> bool:
        """True when the progress belongs to the running job (and is passed on)."""
        if self.job is None or self.job.job_id != msg.job_id:
            return False
        self.job.clock.progressed(msg.phase, now, msg.message, msg.step)
        return True

    def tick(self, now: float) -> Verdict | None:
        planned = self.planned_verdict()
        if planned is not None or self.drain is not Drain.NO:
            return planned
        limit_s = self.settings.ready_timeout_s
        if self.state is SlotState.PROVING and now - self._ready_at > limit_s:
            return Verdict(LossCause.PROBE_FAILED, f"did not answer its probe within {limit_s:g} s")
        hb = self.last_heartbeat
        return liveness_verdict(
            self.settings,
            now,
            ready=self.ready is not None,
            spawned_at=self._spawned_at,
            host_state=hb.state if hb else "idle",
            last_beat_at=self._last_beat_at,
            job=None if self.job is None else self.job.clock,
        )

    def planned_verdict(self) -> Verdict | None:
        """A stop the supervisor wants (drain, recycle), once the slot is between jobs."""
        if self.drain is Drain.FORCED:
            if self.job is not None:
                return Verdict(LossCause.FORCED, "was stopped before its job finished")
            return Verdict(LossCause.DRAIN, "supervisor shutting down")
        if self.drain is Drain.POLITE:
            return None if self.job is not None else Verdict(LossCause.DRAIN, "shutting down")
        if self.recycle_reason and self.is_idle:
            return Verdict(self.recycle_cause, self.recycle_reason)
        return None

    def request_recycle(self, cause: LossCause, detail: str, generation: int) -> None:
        """Replace the host of ``generation`` once it is between jobs (the GPU governor asks
        for this); a request about a host that is gone already is dropped."""
        if generation == self.generation and self.recycle_reason is None:
            self.recycle_reason = detail
            self.recycle_cause = cause

    # --- jobs -------------------------------------------------------------------------------

    def reserve(self, job_id: str) -> None:
        """Claim the slot for a job about to be accepted; the router saw it free."""
        if not self.is_free:
            raise RuntimeError(f"slot {self.slot_id} reserved while not free ({self.state.value})")
        self.reserved_for = job_id

    def release(self, job_id: str) -> None:
        """The accept for ``job_id`` never went out (a later reservation is not touched)."""
        if self.reserved_for == job_id:
            self.reserved_for = None

    def let_go(self, job_id: str) -> None:
        if self.held_for == job_id:
            self.held_for = None

    def start_job(self, job_id: str, deadline_s: float, now: float) -> JobFailedOutcome | None:
        """The job starts (the caller sends it to the host), or why it cannot."""
        retry = self.held_for == job_id
        claimed = self.reserved_for == job_id or retry
        if self.reserved_for == job_id:
            self.reserved_for = None
        if retry:
            self.held_for = None
        if (
            not claimed
            or self.state is not SlotState.READY
            or self.job is not None
            or self.drain is not Drain.NO
        ):
            return JobFailedOutcome(
                f"{self.engine} engine host {self.slot_id} is {self.state.value}; try again",
                True,
                REASON_NOT_READY,
            )
        self.job = JobRecord(job_id, now, JobClock(deadline_s, now, now), 2 if retry else 1)
        self._apply(SlotEvent.JOB_STARTED)
        return None

    def job_ended(
        self,
        job_id: str,
        *,
        out_of_memory: bool = False,
        retry_possible: bool = False,
        vram_bytes: int | None = None,
    ) -> bool:
        """The host reported the job's result; False when it is not the running job. A
        first out-of-memory failure holds the slot for the job's one local retry, when its
        caller still waits (``retry_possible``). ``vram_bytes`` is the host's GPU memory
        beyond its models now (NVML, where its PID is visible)."""
        job = self.job
        if job is None or job.job_id != job_id:
            return False
        self.job = None
        if out_of_memory and retry_possible:
            self._hold(job)
        self.jobs_done += 1
        self._apply(SlotEvent.JOB_FINISHED)
        self.recycle_reason = self.recycle_reason or self._leaks.after_job(
            self.last_heartbeat, job_id, vram_bytes
        )
        return True

    def retry_pending(self, job_id: str) -> bool:
        return self.held_for == job_id

    def _hold(self, job: JobRecord) -> None:
        """Keep the slot for the job's one local retry after out-of-memory: only its first
        attempt, and never while stopping."""
        if job.attempt == 1 and self.drain is Drain.NO:
            self.held_for = job.job_id

    # --- drain --------------------------------------------------------------------------------

    def request_drain(self, *, forced: bool) -> Verdict | None:
        """Stop taking jobs; a polite drain lets a running job finish first."""
        if forced:
            self.drain = Drain.FORCED
        elif self.drain is Drain.NO:
            self.drain = Drain.POLITE
        if self.state is SlotState.BUSY:
            self._apply(SlotEvent.DRAIN)
        if self.state in _HOST_UP:
            return self.planned_verdict()
        return None

    # --- the end of a generation ------------------------------------------------------------

    def leave_generation(self, verdict: Verdict) -> None:
        """Move the state as soon as the verdict is in, before the host is stopped, so no
        job is handed to a host on its way out (a polite stop can take seconds)."""
        if verdict.polite and not verdict.final:
            self._apply(SlotEvent.RECYCLE)
        elif not verdict.final:
            self._apply(SlotEvent.HOST_LOST)
        elif self.state is not SlotState.DRAINING:
            self._apply(SlotEvent.DRAIN)

    def settle(
        self, verdict: Verdict, exit_text: str | None, now: float, *, retry_possible: bool = False
    ) -> Settled:
        """The host is gone: charge the loss (``loss_ledger``), fail the job it ran, decide
        when to respawn. ``retry_possible``: the lost job's caller still waits (an
        out-of-memory loss holds the slot for its one retry)."""
        self.last_exit = exit_text
        self.reserved_for = None
        job = self.job
        lost = self._lost_job(verdict, retry_possible)
        if self.state is SlotState.DRAINING:
            self._apply(SlotEvent.STOPPED)
        if verdict.final or self.state is SlotState.STOPPED:
            return Settled(lost, parked=False)
        self.restarts += 1
        self.restart_causes[verdict.cause] += 1
        # A job may be to blame, never while it was downloading (a download is no input).
        blame = job is not None and verdict.strikes_job and not job.clock.downloading
        charge = self._losses.host_gone(
            now, crash=verdict.crash, suspect=job.job_id if job is not None and blame else None
        )
        self._resume_at = now + charge.backoff_s
        if verdict.cause is LossCause.WRONG_DEVICE or charge.park:
            # Wrong device: restarting cannot move the engine onto the GPU, so wait for the
            # operator; otherwise the crash loop is full.
            self._park(now)
        return Settled(lost, parked=self.state is SlotState.FAILED, unproven=charge.unproven)

    def spawn_failed(self, error: str, now: float) -> str | None:
        """The process could not even be started: back off like a crash. Returns the job
        whose pending loss now stays the engine's, if any."""
        self.last_exit = f"spawn failed: {error}"
        self.restarts += 1
        self.restart_causes[LossCause.SPAWN] += 1
        charge = self._losses.host_gone(now, crash=True)
        self._resume_at = now + charge.backoff_s
        if self.state is SlotState.FAILED or charge.park:
            self._park(now)
        return charge.unproven

    def _park(self, now: float) -> None:
        self.parked_until = self._resume_at = now + self.settings.crash_loop_cooldown_s
        if self.state is SlotState.RESTARTING:
            self._apply(SlotEvent.PARK)

    @property
    def crash_loop_count(self) -> int:
        return self._losses.recent

    def _lost_job(self, verdict: Verdict, retry_possible: bool) -> LostJob | None:
        job = self.job
        if job is None:
            return None
        self.job = None
        if verdict.cause is LossCause.VRAM_OOM and retry_possible:
            self._hold(job)
        return LostJob(
            job.job_id, lost_job_failure(self.engine, self.slot_id, job, verdict, self._poison)
        )

    def stop(self) -> None:
        """The driver's loop is over: end in STOPPED from wherever the slot stands."""
        for event in events_to_stop(self.state):
            self._apply(event)
