"""What an engine slot does with each message from its host: one exhaustive dispatch.

Each message goes to the pure slot core (the lifecycle, the job and its clocks, the
heartbeat's levels, the proof a fresh host gives after a loss), to the GPU governor (load
requests, what the host keeps loaded, load progress) or to GPU health (probe results), and
a job's result to the task waiting for it. The answer is a verdict when the message ends the
host generation. ``slot.Slot`` mixes this in; the state it reads and writes is declared here.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import assert_never

import anyio
import anyio.abc
import zmq

from protocol import ipc
from supervisor.gpu.governor import GpuGovernor
from supervisor.gpu.health_watch import HealthWatch
from supervisor.gpu.slot_contract import RecycleCause
from supervisor.pool.host_process import HostProcess
from supervisor.pool.ipc_router import Inbound, IpcRouter
from supervisor.pool.job_outcome import JobFailedOutcome, JobOutcome, JobSucceeded
from supervisor.pool.loss_ledger import Strike
from supervisor.pool.slot_views import SlotViews
from supervisor.pool.verdict import LossCause, Verdict
from supervisor.stats import ProgressStats

log = logging.getLogger("supervisor.slot")

ProgressCallback = Callable[[ipc.Progress], None]
_HOST_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}


class Caller:
    """The task waiting for one job's outcome."""

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.outcome: JobOutcome | None = None
        self.done = anyio.Event()

    def resolve(self, outcome: JobOutcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
            self.done.set()


class SlotInbox(SlotViews):
    gpu: GpuGovernor
    health: HealthWatch
    progress_stats: ProgressStats
    _callers: dict[str, Caller]

    _router: IpcRouter
    _generation_tasks: anyio.abc.TaskGroup | None  # the current host generation's

    def _changed(self) -> None:
        raise NotImplementedError  # the driver (``slot.Slot``) says who is told

    # --- what the GPU governor drives (GovernedSlot) -----------------------------------------

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

    def recycle(self, cause: RecycleCause, detail: str, generation: int) -> None:
        self.core.request_recycle(LossCause(cause.value), detail, generation)
        self._changed()

    def vram_bytes(self) -> int | None:
        """The host's GPU memory, from NVML where its PID is visible."""
        return self.gpu.process_bytes(self)

    def _leak_bytes(self) -> int | None:
        """GPU memory beyond the models the host keeps: the recycle rule's VRAM figure
        (loading another model is not a leak)."""
        return self.gpu.unexplained_bytes(self)

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
                if self.core.progress_received(msg, now):
                    self.progress_stats.observe(msg, now)
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
                self.gpu.load_requested(self, msg)
            case ipc.Resident():
                self.gpu.resident_reported(self, msg.models)
            case ipc.ProbeResult():
                self.health.probe_reported(self, msg)
                verdict = self._on_proof(msg)
                if verdict is not None:
                    return verdict
            case _:
                assert_never(msg)
        return self.core.planned_verdict()

    def _on_ready(self, host: HostProcess, msg: ipc.Ready, now: float) -> Verdict | None:
        first = self.core.ready is None
        verdict = self.core.ready_received(
            msg, authentic=hmac.compare_digest(msg.token, host.token), now=now
        )
        if verdict is None and first:
            self.health.host_ready(self)
            log.info(
                "engine host ready engine=%s slot=%s pid=%d elapsed_ms=%d libraries=%s",
                self.engine,
                self.slot_id,
                msg.pid,
                int((now - host.started) * 1000),
                ",".join(f"{k}={v}" for k, v in msg.library_versions.items()) or "-",
            )
            if self.core.proving_for is not None:
                self._prove(host)
            self._changed()
        return verdict

    def _prove(self, host: HostProcess) -> None:
        """Probe a fresh host before it takes work: the last host was lost during a job
        that may be to blame (``loss_ledger``). A host on the CPU passes at once."""
        log.info(
            "slot %s: probing the fresh host pid=%d before it takes work (the last one was "
            "lost during job %s)",
            self.slot_id,
            host.pid,
            self.core.proving_for,
        )
        probe = ipc.Probe(self.gpu.settings.probe_bytes)
        if self._generation_tasks is not None:
            self._generation_tasks.start_soon(self.send, probe)

    def _on_proof(self, msg: ipc.ProbeResult) -> Verdict | None:
        answer = self.core.probe_answered(msg.ok, msg.detail)
        match answer:
            case Verdict():
                return answer
            case Strike():
                log.warning(
                    "slot %s: the fresh host passed its probe, so the host lost during job %s "
                    "counts against the job (strike %d of %d)%s",
                    self.slot_id,
                    answer.job_id,
                    answer.strikes,
                    answer.limit,
                    "; the job is poison: a later offer of it is refused" if answer.poison else "",
                    extra={"job_id": answer.job_id},
                )
            case None:
                pass
            case _:
                assert_never(answer)
        self._changed()  # proven: the slot is ready (a health probe's result changes nothing)
        return None

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
        ended = self.core.job_ended(
            job_id,
            out_of_memory=oom,
            retry_possible=job_id in self._callers,
            vram_bytes=self._leak_bytes(),
        )
        if not ended:
            log.warning("slot %s: result for job %s that it is not running", self.slot_id, job_id)
            return
        self.gpu.job_ended(self, job_id)
        if failure is not None and failure.reason == ipc.REASON_DEVICE_ERROR:
            self.health.fault(self.device_index, f"device error on slot {self.slot_id}")
        caller = self._callers.get(job_id)
        if caller is not None:
            caller.resolve(outcome)
        if self.core.recycle_reason:
            log.info("recycling engine host slot=%s: %s", self.slot_id, self.core.recycle_reason)
        self._changed()
