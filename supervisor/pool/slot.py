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
import logging
import time
from collections.abc import Callable
from typing import Final, assert_never

import anyio
import anyio.abc
import zmq

from engines.load_keys import load_key
from protocol import ipc
from protocol.tasks import task_kind
from supervisor.gpu.governor import GpuGovernor
from supervisor.pool.failure_causes import death_verdict, is_device_fault, read_oom_kill_count
from supervisor.pool.host_process import ExitInfo, HostProcess, LaunchOptions
from supervisor.pool.ipc_router import IpcRouter
from supervisor.pool.job_outcome import JobOutcome
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_core import SlotCore
from supervisor.pool.slot_inbox import Caller, ProgressCallback, SlotInbox
from supervisor.pool.slot_race import first_verdict
from supervisor.pool.slot_spec import SlotSpec
from supervisor.pool.slot_state import SlotState
from supervisor.pool.slot_steps import Drain, ExpectedDevice, Spawn, Stop, Wait
from supervisor.pool.slot_views import Pin
from supervisor.pool.verdict import LossCause, Verdict
from supervisor.stats import ProgressStats

log = logging.getLogger("supervisor.slot")

# Engines that compute on the GPU they are pinned to (synthetic only on a simulated one).
GPU_ENGINES: Final = frozenset({"llama", "sdcpp"})
LOSS_STDERR_LINES: Final = 20


class Slot(SlotInbox):
    def __init__(
        self,
        spec: SlotSpec,
        settings: PoolSettings,
        router: IpcRouter,
        poison: PoisonJobs,
        gpu: GpuGovernor,
        on_change: Callable[[], None] = lambda: None,
        *,
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
        self.health = gpu.watch
        self._router = router
        self._on_change = on_change
        self.host: HostProcess | None = None
        self.progress_stats = ProgressStats()  # download bytes, load times (metrics)
        self._killed_by_us = False
        self._job_facts: dict[str, str] = {}  # the running job's kind and model, never prompt
        self._generation_tasks: anyio.abc.TaskGroup | None = None
        self._callers: dict[str, Caller] = {}
        self._drain_event = anyio.Event()
        # Made by the first waiter, set (and dropped) by the next change: most changes have
        # nobody waiting, and an Event costs more than the change.
        self._state_changed: anyio.Event | None = None

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
            self.gpu.release(run.job_id)  # the memory reserved for it is not going to be used
            return refused
        caller = self._callers[run.job_id] = Caller(on_progress)
        self._job_facts = {"job_kind": task_kind(run.task), "model": run.model}
        if self.pin is not None:
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
        """True once the slot is ready; False at the timeout, or at once when it is stopping
        (it will not be ready again)."""
        with anyio.move_on_after(timeout_s):
            while self.state is not SlotState.READY:
                if self.core.drain is not Drain.NO or self.state is SlotState.STOPPED:
                    return False
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
            unproven = self.core.spawn_failed(str(exc), time.monotonic())
            log.error(
                "could not start engine host engine=%s slot=%s: %s", self.engine, self.slot_id, exc
            )
            self._log_unproven(unproven)
            self._changed()
            return
        self.host = host
        self._killed_by_us = False
        oom_kills = read_oom_kill_count()
        self.core.spawned(time.monotonic())
        self._changed()
        verdict = Verdict(LossCause.EXIT, "host ended")
        try:
            async with anyio.create_task_group() as tg:
                self._generation_tasks = tg
                tg.start_soon(host.watch, host.log_line)
                verdict = await first_verdict(
                    host,
                    inbox,
                    on_message=lambda item: self._handle(host, item),
                    on_tick=lambda: self.core.tick(time.monotonic()),
                    on_exit=lambda exit: self._death_verdict(exit, oom_kills),
                    tick_s=self.settings.watchdog_tick_s,
                )
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
            self._generation_tasks = None
            with anyio.CancelScope(shield=True):
                await host.reap()
                self._router.close_inbox(identity)
                inbox.close()
        assert host.exit is not None
        self._settle(verdict, host.exit, oom_kills)

    def _launch_options(self) -> LaunchOptions:
        governed = self.gpu.settings.governed and self.pin is not None
        return LaunchOptions(
            endpoint=self._router.endpoint,
            models_root=self.settings.models_root,
            heartbeat_s=self.settings.heartbeat_s,
            faults=self.settings.faults if self.engine == "synthetic" else "",
            extra_env=self.pin.env if self.pin is not None else (),
            threads=None if self.engine == "synthetic" else self.settings.cpu_threads,
            ask_before_load=governed,
            max_warm_models=self.gpu.settings.max_warm_models,
            models_max_bytes=self.settings.models_max_bytes,
        )

    def _leave(self, verdict: Verdict) -> None:
        self.core.leave_generation(verdict)
        self._changed()

    def _report_loss(self, verdict: Verdict, exit: ExitInfo) -> None:
        """The one error line of a lost host, once it is reaped: its exit and stderr tail
        ride along as ``host_loss`` (the telemetry's event; the prompt is scrubbed there)."""
        if verdict.polite or verdict.final:
            return
        assert self.host is not None
        facts = {
            "engine": self.engine,
            "slot": self.slot_id,
            "gpu": self.device_index,
            "cause": str(verdict.cause),
            "exit": exit.describe(),  # the detail is in the message: Sentry keeps 10 keys
            "signal": exit.signal_name,
            "exit_code": exit.returncode if exit.returncode >= 0 else None,
            "stderr_tail": list(self.host.stderr_tail)[-LOSS_STDERR_LINES:],
            **(self._job_facts if self.job_id is not None else {}),
        }
        log.error(
            "engine host lost engine=%s slot=%s pid=%s cause=%s: %s",
            self.engine,
            self.slot_id,
            self.host.pid,
            verdict.cause,
            verdict.detail,
            extra={"host_loss": facts},
        )

    def _settle(self, verdict: Verdict, exit: ExitInfo, oom_kills: int | None) -> None:
        self._report_loss(verdict, exit)
        self.gpu.host_gone(self)
        self.health.host_lost(self)
        assert self.host is not None
        fault = is_device_fault(exit.returncode, list(self.host.stderr_tail))
        if fault is not None and verdict.cause not in (LossCause.DRAIN, LossCause.RECYCLE):
            self.health.fault(self.device_index, f"{fault} on slot {self.slot_id}")
        waited = self.job_id is not None and self.job_id in self._callers
        settled = self.core.settle(
            verdict, exit.describe(), time.monotonic(), retry_possible=waited
        )
        if settled.lost is not None:
            caller = self._callers.get(settled.lost.job_id)
            if caller is not None:
                caller.resolve(settled.lost.outcome)
        self._log_unproven(settled.unproven)
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

    def _log_unproven(self, job_id: str | None) -> None:
        if job_id is not None:
            log.warning(
                "slot %s: the host lost during job %s counts toward the crash loop, not "
                "against the job: the next host did not prove itself",
                self.slot_id,
                job_id,
                extra={"job_id": job_id},
            )

    def _death_verdict(self, exit: ExitInfo, oom_kills_before: int | None) -> Verdict:
        """Why the host died: the engine's own words first, the signal second."""
        now = read_oom_kill_count()
        grew = oom_kills_before is not None and now is not None and now > oom_kills_before
        assert self.host is not None
        return death_verdict(
            exit.returncode,
            exit.describe(),
            we_killed=self._killed_by_us,
            stderr_tail=list(self.host.stderr_tail),
            oom_kills_grew=grew,
        )
