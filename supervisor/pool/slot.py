"""One engine slot's driver: spawns its host processes, moves messages, sleeps, and asks
``SlotCore`` what to do at every step.

Every decision (the lifecycle, reservations, draining, recycling, parking, the crash loop,
what a lost job becomes) lives in the pure ``slot_core``; this module owns only what cannot
be pure: the host process, the ZeroMQ inbox, the clock and the waiting callers. A host
generation races four watchers (the process exit, seen directly, not by timeout; the
inbox; the watchdog tick; requests to drain) and the first verdict ends it.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, assert_never

import anyio
import zmq
from anyio.streams.memory import MemoryObjectReceiveStream

from engines.load_keys import load_key
from protocol import ipc
from supervisor.gpu.facts import GpuDevice
from supervisor.gpu.governor import GpuGovernor, RecycleCause
from supervisor.gpu.health_watch import HealthWatch
from supervisor.pool.failure_causes import classify_host_loss, is_device_fault, read_oom_kill_count
from supervisor.pool.host_process import ExitInfo, HostProcess, LaunchOptions
from supervisor.pool.ipc_router import Inbound, IpcRouter
from supervisor.pool.job_outcome import JobFailedOutcome, JobOutcome, JobSucceeded
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_core import ExpectedDevice, SlotCore, Spawn, Stop, Wait
from supervisor.pool.slot_spec import SlotSpec
from supervisor.pool.slot_state import SlotState
from supervisor.pool.verdict import LossCause, Verdict
from supervisor.stats import ProgressStats

log = logging.getLogger("supervisor.slot")

ProgressCallback = Callable[[ipc.Progress], None]
STDERR_TAIL_LINES: Final = 40  # what a host said last, for the cause of its death
# Engines that compute on the GPU they are pinned to (synthetic only on a simulated one).
GPU_ENGINES: Final = frozenset({"llama", "sdcpp"})


@dataclass(frozen=True)
class Pin:
    """The GPU a slot's hosts run on, and the environment that pins them there."""

    device: GpuDevice
    env: tuple[tuple[str, str], ...]
    simulated: bool


_HOST_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}
_OUTPUT_LEVELS = {
    "DEBUG": logging.DEBUG,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.ERROR,
}


class _Caller:
    """The task waiting for one job's outcome."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
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
        *,
        gpu: GpuGovernor | None = None,
        health: HealthWatch | None = None,
        pin: Pin | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.core = SlotCore(spec.slot_id, spec.engine, settings, poison)
        self.pin = pin
        if pin is not None and spec.gpu is not None:
            self.core.expected = ExpectedDevice(
                spec.gpu,
                pin.device.name,
                pin.device.uuid,
                spec.engine in GPU_ENGINES or pin.simulated,
            )
        self.gpu = gpu
        self.health = health
        self._router = router
        self._on_change = on_change
        self.host: HostProcess | None = None
        self.progress_stats = ProgressStats()  # download bytes, load times (metrics)
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._killed_by_us = False
        self._callers: dict[str, _Caller] = {}
        self._drain_event = anyio.Event()
        # Made by the first waiter, set (and dropped) by the next change: most changes have
        # nobody waiting, and an Event costs more than the change.
        self._state_changed: anyio.Event | None = None

    # --- views (the core holds the facts) -----------------------------------------------------

    @property
    def slot_id(self) -> str:
        return self.spec.slot_id

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def state(self) -> SlotState:
        return self.core.state

    @property
    def is_free(self) -> bool:
        return self.core.is_free

    @property
    def is_serving(self) -> bool:
        return self.core.is_serving

    @property
    def ready_info(self) -> ipc.Ready | None:
        return self.core.ready

    @property
    def last_heartbeat(self) -> ipc.HostHeartbeat | None:
        return self.core.last_heartbeat

    @property
    def job_id(self) -> str | None:
        return self.core.job.job_id if self.core.job is not None else None

    @property
    def generation(self) -> int:
        return self.core.generation

    @property
    def jobs_done(self) -> int:
        return self.core.jobs_done

    @property
    def restarts(self) -> int:
        return self.core.restarts

    @property
    def restart_causes(self) -> Counter[LossCause]:
        return self.core.restart_causes

    @property
    def last_exit(self) -> str | None:
        return self.core.last_exit

    @property
    def parked_until(self) -> float | None:
        return self.core.parked_until

    @property
    def pid(self) -> int | None:
        return self.host.pid if self.host is not None and self.host.exit is None else None

    def exit_info(self) -> ExitInfo | None:
        return self.host.exit if self.host is not None else None

    # --- what the GPU governor needs (GovernedSlot) ---------------------------------------------

    @property
    def device_index(self) -> int | None:
        return self.pin.device.index if self.pin is not None else None

    @property
    def is_idle(self) -> bool:
        return self.core.is_idle

    async def send(self, msg: ipc.SupervisorMessage) -> bool:
        """Send to the current host; False when there is none to hear it."""
        host = self.host
        if host is None or host.exit is not None:
            return False
        try:
            await self._router.send(host.identity, msg)
        except zmq.ZMQError as exc:
            log.warning("could not reach host %s: %s", self.slot_id, exc)
            return False
        return True

    def recycle(self, cause: RecycleCause, detail: str) -> None:
        self.core.request_recycle(LossCause(cause.value), detail)
        self._changed()

    def vram_bytes(self) -> int | None:
        """The host's GPU memory, from NVML where its PID is visible."""
        return self.gpu.process_bytes(self) if self.gpu is not None else None

    def _leak_bytes(self) -> int | None:
        """GPU memory beyond the models the host keeps: the recycle rule's VRAM figure
        (loading another model is not a leak)."""
        return self.gpu.unexplained_bytes(self) if self.gpu is not None else None

    # --- jobs -------------------------------------------------------------------------------

    async def execute(self, run: ipc.RunJob, on_progress: ProgressCallback | None) -> JobOutcome:
        """Run one job on this slot's host; the slot must be reserved for it (``reserve``).

        A first out-of-memory failure is retried once here, after ``relieve`` has freed
        memory on the slot's GPU; the second one is returned (retryable, cause vram_oom).
        """
        outcome = await self._run_once(run, on_progress)
        if not self.core.retry_pending(run.job_id):
            return outcome
        try:
            if self.gpu is not None:
                await self.gpu.relieve(self)
            if await self.wait_ready(self.settings.ready_timeout_s):
                log.warning(
                    "job %s ran out of GPU memory on slot %s; retrying it once here",
                    run.job_id,
                    self.slot_id,
                    extra={"job_id": run.job_id},
                )
                outcome = await self._run_once(run, on_progress)
        finally:
            self.core.let_go(run.job_id)
            self._changed()
        return outcome

    async def _run_once(self, run: ipc.RunJob, on_progress: ProgressCallback | None) -> JobOutcome:
        refused = self.core.start_job(run.job_id, run.deadline_s, time.monotonic())
        self._changed()
        if refused is not None:
            return refused
        caller = self._callers[run.job_id] = _Caller(on_progress)
        if self.gpu is not None and self.pin is not None:
            key = load_key(self.engine, run.model, run.model_source, run.task)
            self.gpu.job_started(self, run.job_id, key)
        assert self.host is not None
        try:
            await self._router.send(self.host.identity, run)
        except zmq.ZMQError as exc:
            # The host vanished between Ready and now; its exit resolves the job.
            log.warning("job %s could not reach host %s: %s", run.job_id, self.slot_id, exc)
        try:
            await caller.done.wait()
        except anyio.get_cancelled_exc_class():
            # The caller gave up (its studio session ended): tell the host to stop the job;
            # the slot stays busy until the host says the job is over.
            caller.on_progress = None
            with anyio.CancelScope(shield=True):
                await self._send_cancel(run.job_id)
            raise
        finally:
            self._callers.pop(run.job_id, None)
        assert caller.outcome is not None
        return caller.outcome

    async def _send_cancel(self, job_id: str) -> None:
        if self.host is None or self.job_id != job_id:
            return
        with contextlib.suppress(zmq.ZMQError):
            await self._router.send(self.host.identity, ipc.CancelJob(job_id))

    # --- control ------------------------------------------------------------------------------

    def request_drain(self) -> None:
        """Stop taking jobs; stop the host once its job (if any) has finished."""
        self.core.request_drain(forced=False)
        self._drain_event.set()
        self._changed()

    def force_stop(self) -> None:
        """Stop now, killing a running job (reported retryable): the drain grace is over."""
        self.core.request_drain(forced=True)
        self._drain_event.set()
        self._changed()

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

    def _changed(self) -> None:
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = None
        self._on_change()

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep a host alive until drained; returns with the slot STOPPED."""
        try:
            while True:
                step = self.core.next_step(time.monotonic())
                match step:
                    case Stop():
                        break
                    case Wait(until=until):
                        with anyio.move_on_after(max(0.0, until - time.monotonic())):
                            await self._drain_event.wait()
                    case Spawn():
                        await self._run_generation()
                    case _:
                        assert_never(step)
        finally:
            self.core.stop()
            self._changed()

    async def _run_generation(self) -> None:
        identity = f"{self.slot_id}.{self.core.generation + 1}"
        inbox = self._router.open_inbox(identity)
        try:
            host = await HostProcess.spawn(self.spec, identity, self._launch_options())
        except OSError as exc:
            # Out of file descriptors, memory, a vanished interpreter: back off and retry
            # like any crash instead of taking the supervisor down.
            self._router.close_inbox(identity)
            inbox.close()
            self.core.spawn_failed(str(exc), time.monotonic())
            log.error(
                "could not start engine host engine=%s slot=%s: %s", self.engine, self.slot_id, exc
            )
            self._changed()
            return
        self.host = host
        self._stderr_tail.clear()
        self._killed_by_us = False
        oom_kills = read_oom_kill_count()
        self.core.spawned(time.monotonic())
        self._changed()
        verdict = Verdict(LossCause.EXIT, "host ended")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(host.watch, self._on_output_line)
                verdict = await self._supervise(host, inbox, oom_kills)
                self._leave(verdict)
                if verdict.polite:
                    await host.stop(
                        lambda: self._router.send(
                            identity, ipc.Shutdown(self.settings.shutdown_grace_s)
                        ),
                        self.settings.shutdown_grace_s,
                        self.settings.term_grace_s,
                    )
                else:
                    self._killed_by_us = True
                    host.kill()
        finally:
            with anyio.CancelScope(shield=True):
                await host.reap()
                self._router.close_inbox(identity)
                inbox.close()
        assert host.exit is not None
        self._settle(verdict, host.exit, oom_kills)

    def _launch_options(self) -> LaunchOptions:
        governed = self.gpu is not None and self.gpu.settings.governed and self.pin is not None
        return LaunchOptions(
            endpoint=self._router.endpoint,
            models_root=self.settings.models_root,
            heartbeat_s=self.settings.heartbeat_s,
            faults=self.settings.faults if self.engine == "synthetic" else "",
            extra_env=self.pin.env if self.pin is not None else (),
            threads=None if self.engine == "synthetic" else self.settings.cpu_threads,
            ask_before_load=governed,
            max_warm_models=self.gpu.settings.max_warm_models if self.gpu is not None else 1,
        )

    def _leave(self, verdict: Verdict) -> None:
        self.core.leave_generation(verdict)
        if not verdict.polite and not verdict.final:
            log.error(
                "engine host lost engine=%s slot=%s pid=%s cause=%s: %s",
                self.engine,
                self.slot_id,
                self.host.pid if self.host else "?",
                verdict.cause,
                verdict.detail,
            )
        self._changed()

    def _settle(self, verdict: Verdict, exit: ExitInfo, oom_kills: int | None) -> None:
        if self.gpu is not None:
            self.gpu.host_gone(self)
        if self.health is not None:
            self.health.host_lost(self)
            fault = is_device_fault(exit.returncode, list(self._stderr_tail))
            if fault is not None and verdict.cause not in (LossCause.DRAIN, LossCause.RECYCLE):
                self.health.fault(self.device_index, f"{fault} on slot {self.slot_id}")
        settled = self.core.settle(verdict, exit.describe(), time.monotonic())
        if settled.lost is not None:
            caller = self._callers.get(settled.lost.job_id)
            if caller is not None:
                caller.resolve(settled.lost.outcome)
        if settled.parked and verdict.cause is LossCause.WRONG_DEVICE:
            log.error(
                "slot %s parked: its engine host %s; its models leave the capabilities and "
                "it tries again in %.0f s",
                self.slot_id,
                verdict.detail,
                self.settings.crash_loop_cooldown_s,
            )
        elif settled.parked:
            log.error(
                "slot %s parked: %d host losses within %.0f s; its models leave the "
                "capabilities for %.0f s (last: %s)",
                self.slot_id,
                self.core.crash_loop_count,
                self.settings.crash_loop_window_s,
                self.settings.crash_loop_cooldown_s,
                verdict.detail,
            )
        self._changed()

    async def _supervise(
        self,
        host: HostProcess,
        inbox: MemoryObjectReceiveStream[Inbound],
        oom_kills_before: int | None,
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
                decide(self._death_verdict(host.exit, oom_kills_before))

            async def on_messages() -> None:
                while (item := await _next_inbound(inbox)) is not None:
                    verdict = self._handle(host, item)
                    if verdict is not None:
                        decide(verdict)
                        return

            async def on_watchdog() -> None:
                while True:
                    await anyio.sleep(self.settings.watchdog_tick_s)
                    verdict = self.core.tick(time.monotonic())
                    if verdict is not None:
                        decide(verdict)
                        return

            tg.start_soon(on_exit)
            tg.start_soon(on_messages)
            tg.start_soon(on_watchdog)
        return verdicts[0] if verdicts else Verdict(LossCause.EXIT, "inbox closed")

    def _death_verdict(self, exit: ExitInfo, oom_kills_before: int | None) -> Verdict:
        """Why the host died: the engine's own words first, the signal second."""
        now = read_oom_kill_count()
        grew = oom_kills_before is not None and now is not None and now > oom_kills_before
        cause = classify_host_loss(
            returncode=exit.returncode,
            we_killed=self._killed_by_us,
            stderr_tail=list(self._stderr_tail),
            oom_kills_grew=grew,
        )
        detail = f"died ({exit.describe()})"
        if cause is LossCause.VRAM_OOM:
            detail = f"ran out of GPU memory and died ({exit.describe()})"
        elif cause is LossCause.RAM_OOM:
            detail = f"was killed by the kernel's out-of-memory killer ({exit.describe()})"
        return Verdict(cause, detail)

    # --- inbox --------------------------------------------------------------------------------

    def _handle(self, host: HostProcess, item: Inbound) -> Verdict | None:
        msg = item.message
        now = time.monotonic()
        match msg:
            case ipc.Ready():
                return self._on_ready(host, msg, now)
            case ipc.HostHeartbeat():
                return self.core.heartbeat_received(msg, now, self._leak_bytes())
            case ipc.Progress():
                if self.core.progress_received(msg.job_id, now):
                    self.progress_stats.observe(msg, now)
                    if self.gpu is not None:
                        self.gpu.progress_reported(self, msg)
                    self._pass_progress(msg)
            case ipc.JobDone():
                self._finish_job(
                    msg.job_id,
                    JobSucceeded(msg.elapsed_ms, json=msg.json, ext=msg.ext, payload=item.payload),
                )
            case ipc.JobFailed():
                self._finish_job(msg.job_id, JobFailedOutcome(msg.error, msg.retryable, msg.reason))
            case ipc.HostLog():
                log.log(
                    _HOST_LOG_LEVELS.get(msg.level, logging.ERROR),
                    "%s engine=%s slot=%s job_id=%s",
                    msg.message,
                    self.engine,
                    self.slot_id,
                    msg.job_id or "-",
                    extra={"job_id": msg.job_id} if msg.job_id else None,
                )
            case ipc.LoadRequest():
                if self.gpu is not None:
                    self.gpu.load_requested(self, msg)
                else:
                    self._grant_at_once(msg.job_id)
            case ipc.Resident():
                if self.gpu is not None:
                    self.gpu.resident_reported(self, msg.models)
            case ipc.ProbeResult():
                if self.health is not None:
                    self.health.probe_reported(self, msg)
            case _:
                assert_never(msg)
        return self.core.planned_verdict()

    def _on_ready(self, host: HostProcess, msg: ipc.Ready, now: float) -> Verdict | None:
        first = self.core.ready is None
        verdict = self.core.ready_received(
            msg, authentic=hmac.compare_digest(msg.token, host.token), now=now
        )
        if verdict is None and first:
            if self.health is not None:
                self.health.host_ready(self)
            log.info(
                "engine host ready engine=%s slot=%s pid=%d elapsed_ms=%d libraries=%s",
                self.engine,
                self.slot_id,
                msg.pid,
                int((now - host.started) * 1000),
                ",".join(f"{k}={v}" for k, v in msg.library_versions.items()) or "-",
            )
            self._changed()
        return verdict

    def _pass_progress(self, msg: ipc.Progress) -> None:
        caller = self._callers.get(msg.job_id)
        if caller is None or caller.on_progress is None:
            return
        try:
            caller.on_progress(msg)
        except Exception:
            # A display or logging failure must never take the pool down.
            log.exception("progress callback failed for job %s", msg.job_id)

    def _finish_job(self, job_id: str, outcome: JobOutcome) -> None:
        failure = outcome if isinstance(outcome, JobFailedOutcome) else None
        oom = failure is not None and failure.reason == ipc.REASON_VRAM_OOM
        if not self.core.job_ended(job_id, out_of_memory=oom, vram_bytes=self._leak_bytes()):
            log.warning("slot %s: result for job %s that it is not running", self.slot_id, job_id)
            return
        if self.gpu is not None:
            self.gpu.job_ended(self, job_id)
        if failure is not None and failure.reason == ipc.REASON_DEVICE_ERROR and self.health:
            self.health.fault(self.device_index, f"device error on slot {self.slot_id}")
        caller = self._callers.get(job_id)
        if caller is not None:
            caller.resolve(outcome)
        if self.core.recycle_reason:
            log.info("recycling engine host slot=%s: %s", self.slot_id, self.core.recycle_reason)
        self._changed()

    # --- output -------------------------------------------------------------------------------

    def _grant_at_once(self, job_id: str) -> None:
        """No governor (a pool without GPU governance): every load may go ahead."""
        host = self.host
        if host is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.send_nowait(host.identity, ipc.LoadGrant(job_id, True))

    def _on_output_line(self, stream: str, line: str) -> None:
        if not line:
            return
        if stream == "stderr":
            self._stderr_tail.append(line)
        level = _OUTPUT_LEVELS.get(line.split(" ", 1)[0], logging.INFO)
        logging.getLogger(f"engines.{self.engine}").log(
            level, "%s slot=%s pid=%s", line, self.slot_id, self.pid or "-"
        )
