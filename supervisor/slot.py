"""One engine slot: keeps its host process alive and runs jobs on it, one at a time.

A slot spawns a host, waits for its authenticated ``Ready``, then watches four things at
once: the process exit (seen directly, not by timeout), the inbox, the watchdog (ready
timeout, per-state heartbeat timeouts, job deadline, stalled progress) and requests to
drain or recycle. The first verdict ends the host generation; a job that was running is
failed ``retryable: true`` with the cause, or ``retryable: false`` once the same job has
taken a host down ``poison_strikes`` times. Crashes back off exponentially and a crash
loop parks the slot until a cool-down passes. Lifecycle moves go through
``SlotLifecycle`` (the table in ``slot_state``).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

import anyio
import zmq
from anyio.streams.memory import MemoryObjectReceiveStream

from protocol import ipc
from supervisor.host_process import ExitInfo, HostProcess, LaunchOptions
from supervisor.ipc_router import Inbound, IpcRouter
from supervisor.job_outcome import JobFailedOutcome, JobOutcome, JobSucceeded
from supervisor.liveness import RunningJobTimes, Verdict, liveness_verdict
from supervisor.policies import CrashLoopDetector, PoisonJobs, backoff_s, recycle_reason
from supervisor.pool_settings import PoolSettings
from supervisor.slot_spec import SlotSpec
from supervisor.slot_state import SlotEvent, SlotLifecycle, SlotState
from supervisor.stats import ProgressStats

log = logging.getLogger("supervisor.slot")

ProgressCallback = Callable[[ipc.Progress], None]

CAUSE_RECYCLE: Final = "recycle"
CAUSE_DRAIN: Final = "drain"


class _RunningJob:
    def __init__(self, run: ipc.RunJob, on_progress: ProgressCallback | None) -> None:
        self.run = run
        self.on_progress = on_progress
        self.started = time.monotonic()
        self.deadline = self.started + run.deadline_s
        self.outcome: JobOutcome | None = None
        self.done = anyio.Event()

    def resolve(self, outcome: JobOutcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


async def _next_inbound(inbox: MemoryObjectReceiveStream[Inbound]) -> Inbound | None:
    """The next message, or None once the inbox is closed. Messages already queued are
    taken without a checkpoint each: a job's progress, heartbeat and result come in bursts."""
    try:
        return inbox.receive_nowait()
    except anyio.WouldBlock:
        pass
    except anyio.EndOfStream:
        return None
    try:
        return await inbox.receive()
    except anyio.EndOfStream:
        return None


class Slot:
    def __init__(
        self,
        spec: SlotSpec,
        settings: PoolSettings,
        router: IpcRouter,
        poison: PoisonJobs,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.lifecycle = SlotLifecycle(spec.slot_id)
        self._router = router
        self._poison = poison
        self._on_change = on_change
        self.generation = 0
        self.host: HostProcess | None = None
        self.ready_info: ipc.Ready | None = None
        self.last_heartbeat: ipc.HostHeartbeat | None = None
        self.reserved = False
        self.job: _RunningJob | None = None
        self.jobs_done = 0
        self.restarts = 0
        self.restart_causes: Counter[str] = Counter()
        self.progress_stats = ProgressStats()  # download bytes, load times (metrics)
        self.last_exit: str | None = None
        self.parked_until: float | None = None
        self._crash_loop = CrashLoopDetector(settings.crash_loop_max, settings.crash_loop_window_s)
        self._rss_baseline: int | None = None
        self._vram_baseline: int | None = None
        self._baseline_loads = -1
        self._generation_started = 0.0
        self._last_beat_at = 0.0
        self._progress_seq = -1
        self._progress_at = 0.0
        self._draining = False
        self._forced = False
        self._drain_event = anyio.Event()
        self._recycle_reason: str | None = None
        # Made by the first waiter, set (and dropped) by the next transition: most
        # transitions have nobody waiting, and an Event costs more than the transition.
        self._state_changed: anyio.Event | None = None

    # --- views ----------------------------------------------------------------------------

    @property
    def slot_id(self) -> str:
        return self.spec.slot_id

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def state(self) -> SlotState:
        return self.lifecycle.state

    @property
    def is_free(self) -> bool:
        return (
            self.state is SlotState.READY
            and not self.reserved
            and self.job is None
            and not self._draining
        )

    @property
    def is_serving(self) -> bool:
        """Alive and advertising its models (ready or busy)."""
        return self.state in (SlotState.READY, SlotState.BUSY) and self.ready_info is not None

    @property
    def pid(self) -> int | None:
        return self.host.pid if self.host is not None and self.host.exit is None else None

    # --- jobs -----------------------------------------------------------------------------

    async def execute(self, run: ipc.RunJob, on_progress: ProgressCallback | None) -> JobOutcome:
        """Run one job on this slot's host; the slot must be ready (and may be reserved)."""
        if self.state is not SlotState.READY or self.job is not None or self._draining:
            self.reserved = False
            return JobFailedOutcome(
                f"{self.engine} engine host {self.slot_id} is {self.state.value}; try again",
                True,
                "not_ready",
            )
        self.reserved = False
        job = _RunningJob(run, on_progress)
        self.job = job
        self._transition(SlotEvent.JOB_STARTED)
        self._progress_at = time.monotonic()
        assert self.host is not None
        try:
            await self._router.send(self.host.identity, run)
        except zmq.ZMQError as exc:
            # The host vanished between Ready and now; its exit resolves the job.
            log.warning("job %s could not reach host %s: %s", run.job_id, self.slot_id, exc)
        try:
            await job.done.wait()
        except anyio.get_cancelled_exc_class():
            # The caller gave up (its studio session ended): tell the host to stop the job;
            # the slot stays busy until the host says the job is over.
            job.on_progress = None
            with anyio.CancelScope(shield=True):
                await self._send_cancel(run.job_id)
            raise
        assert job.outcome is not None
        return job.outcome

    async def _send_cancel(self, job_id: str) -> None:
        if self.host is None or self.job is None or self.job.run.job_id != job_id:
            return
        with contextlib.suppress(zmq.ZMQError):
            await self._router.send(self.host.identity, ipc.CancelJob(job_id))

    # --- control --------------------------------------------------------------------------

    def request_drain(self) -> None:
        """Stop taking jobs; stop the host once its job (if any) has finished."""
        self._draining = True
        self._drain_event.set()

    def force_stop(self) -> None:
        """Stop now, killing a running job (reported retryable): the drain grace is over."""
        self._forced = True
        self.request_drain()

    async def wait_stopped(self) -> None:
        while self.state is not SlotState.STOPPED:
            await self._wait_change()

    async def wait_ready(self, timeout_s: float) -> bool:
        with anyio.move_on_after(timeout_s):
            while self.state is not SlotState.READY:
                await self._wait_change()
            return True
        return False

    async def _wait_change(self) -> None:
        if self._state_changed is None:
            self._state_changed = anyio.Event()
        await self._state_changed.wait()

    def _transition(self, event: SlotEvent) -> None:
        before = self.lifecycle.state
        after = self.lifecycle.apply(event)
        if after is not before:
            log.debug("slot %s %s -> %s (%s)", self.slot_id, before.value, after.value, event.value)
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = None
        self._on_change()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a host alive until drained; returns with the slot STOPPED."""
        attempt = 0
        try:
            while not self._draining:
                if self.state is SlotState.FAILED:
                    until = self.parked_until or time.monotonic()
                    await self._sleep_unless_drained(until - time.monotonic())
                    if self._draining:
                        break
                    self._crash_loop.reset()
                    self.parked_until = None
                    attempt = 0
                elif attempt:
                    delay = backoff_s(
                        attempt,
                        self.settings.restart_backoff_base_s,
                        self.settings.restart_backoff_max_s,
                    )
                    await self._sleep_unless_drained(delay)
                    if self._draining:
                        break
                verdict = await self._run_generation()
                if verdict.cause == CAUSE_DRAIN:
                    break
                self.restarts += 1
                self.restart_causes[verdict.cause] += 1
                if not verdict.crash:
                    attempt = 0
                    continue
                attempt += 1
                if self._crash_loop.record(time.monotonic()):
                    self.parked_until = time.monotonic() + self.settings.crash_loop_cooldown_s
                    log.error(
                        "slot %s parked: %d host losses within %.0f s; its models leave the "
                        "capabilities for %.0f s (last: %s)",
                        self.slot_id,
                        self._crash_loop.recent,
                        self.settings.crash_loop_window_s,
                        self.settings.crash_loop_cooldown_s,
                        verdict.detail,
                    )
                    if self.lifecycle.can(SlotEvent.PARK):
                        self._transition(SlotEvent.PARK)
        finally:
            if self.lifecycle.can(SlotEvent.DRAIN):
                self._transition(SlotEvent.DRAIN)
            if self.state is SlotState.DRAINING:
                self._transition(SlotEvent.STOPPED)

    async def _sleep_unless_drained(self, delay: float) -> None:
        with anyio.move_on_after(max(0.0, delay)):
            await self._drain_event.wait()

    async def _run_generation(self) -> Verdict:
        self.generation += 1
        identity = f"{self.slot_id}.{self.generation}"
        inbox = self._router.open_inbox(identity)
        opts = LaunchOptions(
            endpoint=self._router.endpoint,
            models_root=self.settings.models_root,
            heartbeat_s=self.settings.heartbeat_s,
            faults=self.settings.faults if self.engine == "synthetic" else "",
            threads=None if self.engine == "synthetic" else self.settings.cpu_threads,
        )
        self.ready_info = None
        self.last_heartbeat = None
        self._rss_baseline = self._vram_baseline = None
        self._baseline_loads = -1
        self._recycle_reason = None
        try:
            host = await HostProcess.spawn(self.spec, identity, opts)
        except OSError as exc:
            # Out of file descriptors, memory, a vanished interpreter: back off and retry
            # like any crash instead of taking the supervisor down.
            self._router.close_inbox(identity)
            inbox.close()
            self.last_exit = f"spawn failed: {exc}"
            if self.state is SlotState.FAILED:
                # Still parked: try again after another cool-down, not in a tight loop.
                self.parked_until = time.monotonic() + self.settings.crash_loop_cooldown_s
            log.error(
                "could not start engine host engine=%s slot=%s: %s", self.engine, self.slot_id, exc
            )
            return Verdict("spawn", f"could not be started ({exc})", True)
        self.host = host
        self._generation_started = time.monotonic()
        self._transition(SlotEvent.SPAWNED)
        verdict = Verdict("exit", "host ended", True)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(host.watch, self._on_output_line)
                verdict = await self._supervise(host, inbox)
                self._leave_generation(verdict)
                if verdict.crash:
                    host.kill()
                else:
                    await host.stop(
                        lambda: self._router.send(
                            identity, ipc.Shutdown(self.settings.shutdown_grace_s)
                        ),
                        self.settings.shutdown_grace_s,
                        self.settings.term_grace_s,
                    )
        finally:
            with anyio.CancelScope(shield=True):
                await host.reap()
                self._router.close_inbox(identity)
                inbox.close()
        assert host.exit is not None
        self.last_exit = host.exit.describe()
        self._settle_after_loss(verdict)
        return verdict

    def _leave_generation(self, verdict: Verdict) -> None:
        """Move the state as soon as the verdict is in, before the host is stopped, so no
        job is handed to a host on its way out (a polite stop can take seconds)."""
        if verdict.cause == CAUSE_RECYCLE:
            self._transition(SlotEvent.RECYCLE)
        elif verdict.cause == CAUSE_DRAIN:
            if self.state in (SlotState.READY, SlotState.BUSY):
                self._transition(SlotEvent.DRAIN)
        else:
            log.error(
                "engine host lost engine=%s slot=%s pid=%s cause=%s: %s",
                self.engine,
                self.slot_id,
                self.host.pid if self.host else "?",
                verdict.cause,
                verdict.detail,
            )
            self._transition(SlotEvent.HOST_LOST)

    def _settle_after_loss(self, verdict: Verdict) -> None:
        """The host is gone: fail the job it was running, finish a drain."""
        job = self.job
        if job is not None:
            self.job = None
            job.resolve(self._failure_for_lost_job(job, verdict))
        self.reserved = False
        if verdict.cause == CAUSE_DRAIN:
            if self.lifecycle.can(SlotEvent.STOPPED):
                self._transition(SlotEvent.STOPPED)
            elif self.lifecycle.can(SlotEvent.DRAIN):
                self._transition(SlotEvent.DRAIN)

    def _failure_for_lost_job(self, job: _RunningJob, verdict: Verdict) -> JobFailedOutcome:
        job_id = job.run.job_id
        if verdict.cause == CAUSE_DRAIN:
            return JobFailedOutcome(
                f"worker shut down before job {job_id} finished on the {self.engine} engine",
                True,
                "shutdown",
            )
        strikes = self._poison.record(job_id)
        text = (
            f"{self.engine} engine host (slot {self.slot_id}) {verdict.detail} during job {job_id}"
        )
        if self._poison.is_poison(job_id):
            return JobFailedOutcome(
                f"{text}; this job has now taken down an engine host {strikes} times, "
                "so it is not retried",
                False,
                "poison",
            )
        return JobFailedOutcome(text, True, verdict.cause)

    async def _supervise(
        self, host: HostProcess, inbox: MemoryObjectReceiveStream[Inbound]
    ) -> Verdict:
        verdicts: list[Verdict] = []

        async with anyio.create_task_group() as tg:

            def decide(verdict: Verdict) -> None:
                if not verdicts:
                    verdicts.append(verdict)
                tg.cancel_scope.cancel()

            async def on_exit() -> None:
                await host.exited.wait()
                assert host.exit is not None
                cause = "signal" if host.exit.signal_name else "exit"
                decide(Verdict(cause, f"died ({host.exit.describe()})", True))

            async def on_messages() -> None:
                while (item := await _next_inbound(inbox)) is not None:
                    verdict = self._handle(host, item)
                    if verdict is not None:
                        decide(verdict)
                        return

            async def on_watchdog() -> None:
                while True:
                    await anyio.sleep(self.settings.watchdog_tick_s)
                    verdict = self._check_watchdog()
                    if verdict is not None:
                        decide(verdict)
                        return

            tg.start_soon(on_exit)
            tg.start_soon(on_messages)
            tg.start_soon(on_watchdog)
        return verdicts[0] if verdicts else Verdict("exit", "inbox closed", True)

    # --- inbox ----------------------------------------------------------------------------

    def _handle(self, host: HostProcess, item: Inbound) -> Verdict | None:
        msg = item.message
        match msg:
            case ipc.Ready():
                return self._on_ready(host, msg)
            case ipc.HostHeartbeat():
                self._on_heartbeat(msg)
            case ipc.Progress():
                job = self.job
                if job is not None and job.run.job_id == msg.job_id:
                    self._progress_at = time.monotonic()
                    self.progress_stats.observe(msg, self._progress_at)
                    if job.on_progress is not None:
                        try:
                            job.on_progress(msg)
                        except Exception:
                            # A display or logging failure must never take the pool down.
                            log.exception("progress callback failed for job %s", msg.job_id)
            case ipc.JobDone():
                self._finish_job(
                    msg.job_id,
                    JobSucceeded(msg.elapsed_ms, json=msg.json, ext=msg.ext, payload=item.payload),
                )
            case ipc.JobFailed():
                self._finish_job(msg.job_id, JobFailedOutcome(msg.error, msg.retryable, msg.reason))
            case ipc.HostLog():
                level = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
                log.log(
                    level.get(msg.level, logging.ERROR),
                    "%s engine=%s slot=%s job_id=%s",
                    msg.message,
                    self.engine,
                    self.slot_id,
                    msg.job_id or "-",
                    extra={"job_id": msg.job_id} if msg.job_id else None,
                )
        return self._planned_verdict()

    def _on_ready(self, host: HostProcess, msg: ipc.Ready) -> Verdict | None:
        if msg.version != ipc.IPC_VERSION or not hmac.compare_digest(msg.token, host.token):
            return Verdict(
                "handshake",
                f"sent a bad handshake (IPC version {msg.version}, expected {ipc.IPC_VERSION})",
                True,
            )
        if self.ready_info is not None:
            return None
        self.ready_info = msg
        self._last_beat_at = time.monotonic()
        elapsed = time.monotonic() - self._generation_started
        log.info(
            "engine host ready engine=%s slot=%s pid=%d elapsed_ms=%d libraries=%s",
            self.engine,
            self.slot_id,
            msg.pid,
            int(elapsed * 1000),
            ",".join(f"{k}={v}" for k, v in msg.library_versions.items()) or "-",
        )
        self._transition(SlotEvent.READY)
        return None

    def _on_heartbeat(self, hb: ipc.HostHeartbeat) -> None:
        now = time.monotonic()
        self.last_heartbeat = hb
        self._last_beat_at = now
        if hb.progress_seq != self._progress_seq:
            self._progress_seq = hb.progress_seq
            self._progress_at = now
        if hb.state == "idle" and hb.model_loads != self._baseline_loads:
            # Levels right after a (re)load are the reference a leak is measured against.
            self._baseline_loads = hb.model_loads
            self._rss_baseline = hb.rss_bytes
            self._vram_baseline = hb.vram_bytes

    def _finish_job(self, job_id: str, outcome: JobOutcome) -> None:
        job = self.job
        if job is None or job.run.job_id != job_id:
            log.warning("slot %s: result for job %s that it is not running", self.slot_id, job_id)
            return
        self.job = None
        self.jobs_done += 1
        if self.state is SlotState.BUSY or self.state is SlotState.DRAINING:
            self._transition(SlotEvent.JOB_FINISHED)
        job.resolve(outcome)
        hb = self.last_heartbeat
        if hb is not None:
            self._recycle_reason = recycle_reason(
                self.settings.recycle,
                hb.jobs_done + 1 if hb.job_id == job_id else hb.jobs_done,
                self._rss_baseline,
                hb.rss_bytes,
                self._vram_baseline,
                hb.vram_bytes,
            )
            if self._recycle_reason:
                log.info("recycling engine host slot=%s: %s", self.slot_id, self._recycle_reason)

    # --- watchdog -------------------------------------------------------------------------

    def _check_watchdog(self) -> Verdict | None:
        planned = self._planned_verdict()
        if planned is not None or self._draining:
            return planned
        job = self.job
        return liveness_verdict(
            self.settings,
            time.monotonic(),
            ready=self.ready_info is not None,
            spawned_at=self._generation_started,
            host_state=self.last_heartbeat.state if self.last_heartbeat else "idle",
            last_beat_at=self._last_beat_at,
            job=None
            if job is None
            else RunningJobTimes(job.deadline, job.run.deadline_s, self._progress_at),
        )

    def _planned_verdict(self) -> Verdict | None:
        """Drain or recycle, once the slot is between jobs."""
        if self._draining:
            return self._drain_verdict()
        if self._recycle_reason and self.job is None and not self.reserved:
            return Verdict(CAUSE_RECYCLE, self._recycle_reason, False)
        return None

    def _drain_verdict(self) -> Verdict | None:
        if self.job is None:
            return Verdict(CAUSE_DRAIN, "supervisor shutting down", False)
        if self._forced:
            return Verdict(CAUSE_DRAIN, "was stopped before its job finished", True)
        if self.state is SlotState.BUSY:
            self._transition(SlotEvent.DRAIN)
        return None

    # --- output ---------------------------------------------------------------------------

    def _on_output_line(self, stream: str, line: str) -> None:
        if not line:
            return
        head = line.split(" ", 1)[0]
        level = {
            "DEBUG": logging.DEBUG,
            "WARNING": logging.WARNING,
            "ERROR": logging.ERROR,
            "CRITICAL": logging.ERROR,
        }.get(head, logging.INFO)
        logging.getLogger(f"engines.{self.engine}").log(
            level, "%s slot=%s pid=%s", line, self.slot_id, self.pid or "-"
        )

    def exit_info(self) -> ExitInfo | None:
        return self.host.exit if self.host is not None else None
