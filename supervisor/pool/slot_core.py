"""Everything that decides one slot's state, in one place, with no I/O (h11's rule).

``SlotCore`` takes events (a host spawned, a message from it, its exit, a clock tick, a
reservation, a drain request) and returns decisions (a ``Verdict`` that ends the host
generation, what happens to a job, when to respawn). It owns the lifecycle table
(``slot_state``) and every fact the table depends on: the reservation, the running job,
draining, the recycle reason, the memory baselines, parking and the crash-loop guard. It
has no event loop, no process and no socket: ``slot.Slot`` is the driver that spawns hosts,
moves bytes and sleeps, and asks this core what to do at every step. Time is always an
argument, so scenario tables test it without a clock.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, assert_never

from protocol import ipc
from supervisor.pool.job_outcome import JobFailedOutcome
from supervisor.pool.liveness import RunningJobTimes, liveness_verdict
from supervisor.pool.policies import CrashLoopDetector, PoisonJobs, backoff_s, recycle_reason
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_state import SlotEvent, SlotState, slot_machine
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


class SlotCore:
    def __init__(self, slot_id: str, engine: str, settings: PoolSettings, poison: PoisonJobs):
        self.slot_id = slot_id
        self.engine = engine
        self.settings = settings
        self._poison = poison
        self._machine = slot_machine(slot_id)
        self._crash_loop = CrashLoopDetector(settings.crash_loop_max, settings.crash_loop_window_s)
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
        self._attempt = 0  # consecutive crashes, for the backoff
        self._resume_at = 0.0
        self._spawned_at = 0.0
        self._last_beat_at = 0.0
        self._progress_seq = -1
        self._baseline: tuple[int, int | None] | None = None  # (RSS, VRAM) after the last load
        self._baseline_loads = -1

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
            self._crash_loop.reset()
            self._attempt = 0
            self.parked_until = None
        return Spawn()

    def spawned(self, now: float) -> None:
        self.generation += 1
        self.ready = None
        self.last_heartbeat = None
        self.recycle_reason = None
        self.recycle_cause = LossCause.RECYCLE
        self._baseline = None
        self._baseline_loads = -1
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
        self._last_beat_at = now
        self._apply(SlotEvent.READY)
        return self.planned_verdict()

    def heartbeat_received(
        self, hb: ipc.HostHeartbeat, now: float, vram_bytes: int | None = None
    ) -> Verdict | None:
        """``vram_bytes``: the host's GPU memory now, as NVML reports it (None: unknown)."""
        self.last_heartbeat = hb
        self._last_beat_at = now
        if hb.progress_seq != self._progress_seq:
            self._progress_seq = hb.progress_seq
            if self.job is not None:
                self.job.progress_at = now
        if hb.state == "idle" and hb.model_loads != self._baseline_loads:
            # Levels right after a (re)load are the reference a leak is measured against.
            self._baseline_loads = hb.model_loads
            self._baseline = (hb.rss_bytes, vram_bytes)
        return self.planned_verdict()

    def progress_received(self, job_id: str, now: float) -> bool:
        """True when the progress belongs to the running job (and is passed on)."""
        if self.job is None or self.job.job_id != job_id:
            return False
        self.job.progress_at = now
        return True

    def tick(self, now: float) -> Verdict | None:
        planned = self.planned_verdict()
        if planned is not None or self.drain is not Drain.NO:
            return planned
        job = self.job
        hb = self.last_heartbeat
        return liveness_verdict(
            self.settings,
            now,
            ready=self.ready is not None,
            spawned_at=self._spawned_at,
            host_state=hb.state if hb else "idle",
            last_beat_at=self._last_beat_at,
            job=None
            if job is None
            else RunningJobTimes(job.deadline, job.deadline_s, job.progress_at),
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
        self.job = JobRecord(job_id, now, deadline_s, now, 2 if retry else 1)
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
        hb = self.last_heartbeat  # the host beats right before each result
        if hb is not None:
            base = self._baseline
            self.recycle_reason = self.recycle_reason or recycle_reason(
                self.settings.recycle,
                hb.jobs_done + 1 if hb.job_id == job_id else hb.jobs_done,
                base[0] if base else None,
                hb.rss_bytes,
                base[1] if base else None,
                vram_bytes,
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
        if self.state in (SlotState.STARTING, SlotState.READY, SlotState.DRAINING):
            return self.planned_verdict()
        return None

    # --- the end of a generation ------------------------------------------------------------

    def leave_generation(self, verdict: Verdict) -> None:
        """Move the state as soon as the verdict is in, before the host is stopped, so no
        job is handed to a host on its way out (a polite stop can take seconds)."""
        match verdict.cause:
            case (
                LossCause.RECYCLE
                | LossCause.UNLOAD_STUCK
                | LossCause.PROBE_FAILED
                | LossCause.GPU_SUSPECT
            ):
                self._apply(SlotEvent.RECYCLE)
            case LossCause.DRAIN | LossCause.FORCED:
                if self.state is not SlotState.DRAINING:
                    self._apply(SlotEvent.DRAIN)
            case _:
                self._apply(SlotEvent.HOST_LOST)

    def settle(
        self, verdict: Verdict, exit_text: str | None, now: float, *, retry_possible: bool = False
    ) -> Settled:
        """The host is gone: count it, fail the job it ran, decide when to respawn.
        ``retry_possible``: the lost job's caller still waits (an out-of-memory loss holds
        the slot for its one retry)."""
        self.last_exit = exit_text
        self.reserved_for = None
        lost = self._lost_job(verdict, retry_possible)
        if self.state is SlotState.DRAINING:
            self._apply(SlotEvent.STOPPED)
        if verdict.final or self.state is SlotState.STOPPED:
            return Settled(lost, parked=False)
        self.restarts += 1
        self.restart_causes[verdict.cause] += 1
        if verdict.cause is LossCause.WRONG_DEVICE:
            # Restarting cannot move the engine onto the GPU: wait for the operator.
            self._park(now)
        elif not verdict.crash:
            self._attempt = 0
            self._resume_at = now
        else:
            self._attempt += 1
            self._resume_at = now + backoff_s(
                self._attempt,
                self.settings.restart_backoff_base_s,
                self.settings.restart_backoff_max_s,
            )
            if self._crash_loop.record(now):
                self._park(now)
        return Settled(lost, parked=self.state is SlotState.FAILED)

    def spawn_failed(self, error: str, now: float) -> None:
        """The process could not even be started: back off like a crash."""
        self.last_exit = f"spawn failed: {error}"
        self.restarts += 1
        self.restart_causes[LossCause.SPAWN] += 1
        self._attempt += 1
        self._resume_at = now + backoff_s(
            self._attempt, self.settings.restart_backoff_base_s, self.settings.restart_backoff_max_s
        )
        if self.state is SlotState.FAILED or self._crash_loop.record(now):
            self._park(now)

    def _park(self, now: float) -> None:
        self.parked_until = self._resume_at = now + self.settings.crash_loop_cooldown_s
        if self.state is SlotState.RESTARTING:
            self._apply(SlotEvent.PARK)

    @property
    def crash_loop_count(self) -> int:
        return self._crash_loop.recent

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
        match self.state:
            case SlotState.READY | SlotState.BUSY:
                self._apply(SlotEvent.DRAIN)
                self._apply(SlotEvent.STOPPED)
            case SlotState.DRAINING:
                self._apply(SlotEvent.STOPPED)
            case SlotState.STARTING | SlotState.RESTARTING | SlotState.FAILED:
                self._apply(SlotEvent.DRAIN)
            case SlotState.STOPPED:
                pass
            case _:
                assert_never(self.state)
