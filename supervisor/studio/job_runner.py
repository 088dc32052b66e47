"""Offers in, results out: decide, accept, run on the pool, deliver (protocol.md §2.8).

Binary results go by multipart upload and are followed by no WebSocket frame at all (the
studio's upload handler nudges its dispatcher itself); JSON results go as ``completeJson``
with the full prompt, unless that frame is over the studio's frame limit: then the job
fails ``retryable: false`` and the session (with every other running job) stays up.
Failures go as ``fail`` with the retry rule of ``offer_routing``. Never ``readyForMore``:
it raced the studio's own nudge. Progress is logged (throttled) with the job id, so the
operator and the studio's log view see long jobs move; a job cut short because the session
ended is logged with its id too.
"""

from __future__ import annotations

import logging
import time
from typing import Final, assert_never

import anyio
import anyio.abc

from engines.progress_bar import TerminalProgress
from protocol import ipc
from protocol.studio import Accept, CompleteJson, Fail, JobOfferClaim, Reject
from protocol.tasks import AudioSttTask, Task, prompt_for, prompt_preview, task_kind
from supervisor.errors import FrameTooLarge, SessionTransportError, StudioError
from supervisor.live_config import LiveConfig
from supervisor.pool.job_outcome import JobFailedOutcome, JobSucceeded
from supervisor.pool.lane_pool import LanePool
from supervisor.pool.slot import Slot
from supervisor.studio.http import StudioHttp
from supervisor.studio.offer_routing import (
    RefuseOffer,
    RejectOffer,
    RunOn,
    WorkerFlags,
    fail_is_retryable,
    route_offer,
)
from supervisor.studio.ws_client import StudioSocket
from supervisor.telemetry.sentry import remember_task
from supervisor.worker_state import ActiveJob, WorkerState

log = logging.getLogger("supervisor.session.jobs")

PROGRESS_LOG_INTERVAL_S: Final = 2.0
CAUSE_RESULT_TOO_LARGE: Final = "result_too_large"  # a JSON result over the frame limit
GIB: Final = 2**30  # the studio's GB are GiB


class JobRunner:
    def __init__(
        self,
        pool: LanePool,
        state: WorkerState,
        http: StudioHttp,
        config: LiveConfig,
        sock: StudioSocket,
    ) -> None:
        self.pool = pool
        self.state = state
        self.http = http
        self.config = config
        self.sock = sock
        self.deadline_s = float(config.current().job_deadline_s)
        self.task_group: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._idle.set()
        self._running = 0

    async def wait_idle(self) -> None:
        while self._running:
            await self._idle.wait()

    async def on_offer(self, claim: JobOfferClaim) -> None:
        job_id = claim.job_id
        log.info(
            "offer received %s game=%s asset=%s model=%s vram=%g",
            job_id,
            claim.game_id,
            claim.asset_name,
            claim.model,
            claim.vram_gb_estimate,
            extra={"job_id": job_id},
        )
        remember_task(claim.task)  # before anything can echo it: telemetry scrubs it
        decision = route_offer(
            claim,
            worker=WorkerFlags(self.state.paused, self.state.shutting_down),
            slots=self.pool.views(),
            is_poison=self.pool.poison.is_poison,
            memory=self.pool.memory(),
            elsewhere=self.pool.engines_elsewhere(),
        )
        match decision:
            case RejectOffer():
                self.state.job_outcomes[f"rejected_{decision.code or 'unfit'}"] += 1
                log.info(
                    "rejecting offer %s code=%s cause=%s: %s",
                    job_id,
                    decision.code or "-",
                    decision.cause,
                    decision.reason,
                    extra={"job_id": job_id},
                )
                await self._send_or_log(
                    Reject(job_id=job_id, reason=decision.reason, code=decision.code),
                    "reject",
                    job_id,
                )
            case RefuseOffer():
                log.warning("refusing job %s: %s", job_id, decision.error, extra={"job_id": job_id})
                if await self._send_or_log(Accept(job_id=job_id), "accept", job_id):
                    await self._fail(job_id, decision.error, retryable=False, cause=decision.cause)
            case RunOn():
                slot = self.pool.reserve(
                    decision.slot_id, job_id, decision.load_key, decision.need_bytes
                )
                self._begin()
                assert self.task_group is not None
                self.task_group.start_soon(self._accept_and_run, claim, slot)
            case _:
                assert_never(decision)

    def _begin(self) -> None:
        self._running += 1
        self._idle = anyio.Event()

    def _end(self) -> None:
        self._running -= 1
        if not self._running:
            self._idle.set()

    async def _accept_and_run(self, claim: JobOfferClaim, slot: Slot) -> None:
        job_id = claim.job_id
        handed_over = False
        try:
            if not await self._send_or_log(Accept(job_id=job_id), "accept", job_id):
                return
            active = ActiveJob(
                job_id,
                task_kind(claim.task),
                claim.model,
                slot.engine,
                slot.slot_id,
                prompt_preview=_page_preview(claim.task),
            )
            self.state.jobs[job_id] = active
            # No await between here and pool.execute, which takes the reservation over.
            handed_over = True
            try:
                await self._run(claim, slot, active)
            except Exception as exc:
                # A bug here must cost one job (reported, retryable), never the session.
                log.exception(
                    "job %s failed inside the supervisor", job_id, extra={"job_id": job_id}
                )
                await self._fail(
                    job_id,
                    f"supervisor error: {type(exc).__name__}: {exc}",
                    retryable=True,
                    cause="supervisor_error",
                )
            finally:
                self.state.finish_job(job_id)
        except anyio.get_cancelled_exc_class():
            # The session ended (or the drain grace ran out): the studio releases the claim,
            # and the host is told to stop the job.
            log.warning(
                "job %s cancelled: the studio session ended while it ran on slot %s",
                job_id,
                slot.slot_id,
                extra={"job_id": job_id},
            )
            raise
        finally:
            # Cancelled (session ended) or refused before the hand-over: free the slot,
            # or every later offer for this engine would be rejected busy.
            if not handed_over:
                self.pool.release(slot, job_id)
            self._end()

    async def _run(self, claim: JobOfferClaim, slot: Slot, active: ActiveJob) -> None:
        job_id = claim.job_id
        run = ipc.RunJob(
            job_id,
            claim.model,
            claim.task,
            claim.model_source,
            self.deadline_s,
            vram_estimate_bytes=int(claim.vram_gb_estimate * GIB),
        )
        log.info(
            "dispatching job %s kind=%s model=%s engine=%s slot=%s",
            job_id,
            active.kind,
            claim.model,
            slot.engine,
            slot.slot_id,
            extra={"job_id": job_id},
        )
        outcome = await slot.execute(run, self._progress_logger(active))
        elapsed_ms = int((time.monotonic() - active.started) * 1000)
        match outcome:
            case JobFailedOutcome():
                retryable = fail_is_retryable(outcome.error, outcome.retryable)
                log.warning(
                    "job %s failed engine=%s slot=%s elapsed_ms=%d retryable=%s reason=%s: %s",
                    job_id,
                    slot.engine,
                    slot.slot_id,
                    elapsed_ms,
                    str(retryable).lower(),
                    outcome.reason,
                    outcome.error,
                    extra={"job_id": job_id},
                )
                await self._fail(
                    job_id, _with_cause(outcome), retryable=retryable, cause=outcome.reason
                )
            case JobSucceeded():
                await self._deliver(claim, outcome, elapsed_ms)
            case _:
                assert_never(outcome)

    async def _deliver(self, claim: JobOfferClaim, outcome: JobSucceeded, elapsed_ms: int) -> None:
        job_id = claim.job_id
        prompt = prompt_for(claim.task)
        if outcome.payload is not None:
            cfg = self.config.current()
            if not (cfg.worker_id and cfg.auth_token):
                await self._fail(
                    job_id,
                    "worker credentials were removed mid-job",
                    retryable=True,
                    cause="credentials",
                )
                return
            ext = outcome.ext or "bin"
            try:
                await self.http.upload_result(
                    cfg.api_base_url,
                    cfg.worker_id,
                    cfg.auth_token,
                    job_id,
                    prompt,
                    ext,
                    outcome.payload.bytes,
                )
            except StudioError as exc:
                await self._fail(job_id, str(exc), retryable=True, cause="upload")
                return
            self.state.count_outcome(job_id, "done")
            log.info(
                "binary upload ok job %s ext=%s bytes=%d elapsed_ms=%d",
                job_id,
                ext,
                len(outcome.payload.buffer),
                elapsed_ms,
                extra={"job_id": job_id},
            )
            return
        frame = CompleteJson(job_id=job_id, result=outcome.json, prompt=prompt)
        try:
            sent = await self._send_or_log(frame, "completeJson", job_id)
        except FrameTooLarge as exc:
            await self._fail_too_large(job_id, exc)
            return
        if sent:
            self.state.count_outcome(job_id, "done")
            log.info(
                "json result sent job %s elapsed_ms=%d",
                job_id,
                elapsed_ms,
                extra={"job_id": job_id},
            )
        else:
            self.state.count_outcome(job_id, "failed_retryable")

    async def _fail_too_large(self, job_id: str, exc: FrameTooLarge) -> None:
        """Sending it would make the studio drop the session (and every other job with it),
        and it would be as large on any other worker: final."""
        error = (
            f"the JSON result of job {job_id} with its prompt is {exc.size} bytes, over the "
            f"studio's frame limit of {exc.limit} bytes (max_frame_bytes); it cannot be "
            "delivered"
        )
        log.error("%s", error, extra={"job_id": job_id})
        await self._fail(job_id, error, retryable=False, cause=CAUSE_RESULT_TOO_LARGE)

    async def _fail(self, job_id: str, error: str, *, retryable: bool, cause: str) -> None:
        outcome = "failed_retryable" if retryable else "failed_final"
        self.state.count_outcome(job_id, outcome, cause)
        try:
            await self.sock.send(Fail(job_id=job_id, error=error, retryable=retryable))
        except SessionTransportError as exc:
            log.error(
                "failed to notify studio of job %s failure: %s",
                job_id,
                exc,
                extra={"job_id": job_id},
            )

    async def _send_or_log(
        self, frame: Accept | Reject | CompleteJson, label: str, job_id: str
    ) -> bool:
        try:
            await self.sock.send(frame)
        except SessionTransportError as exc:
            log.error(
                "%s send failed for offer %s: %s", label, job_id, exc, extra={"job_id": job_id}
            )
            return False
        return True

    def _progress_logger(self, active: ActiveJob) -> ProgressLogger:
        return ProgressLogger(active)


def _page_preview(task: Task) -> str:
    """What the status page shows of a job's prompt: its first 200 characters; an input
    URL without its query string, which may carry a signature."""
    if isinstance(task, AudioSttTask):
        return prompt_preview(task.input_url.split("?", 1)[0])
    return prompt_preview(prompt_for(task))


# Causes that the engine's own error text does not already name.
_NAMED_CAUSES: Final = frozenset(
    {"vram_oom", "ram_oom", "vram_unavailable", "device_error", "wrong_device"}
)


def _with_cause(outcome: JobFailedOutcome) -> str:
    """The fail text, naming the typed cause where the words alone may not (``vram_oom``)."""
    if outcome.reason in _NAMED_CAUSES:
        return f"{outcome.error} (cause: {outcome.reason})"
    return outcome.error


_BAR_UNITS: Final = {"downloading": "bytes", "loading": "parts", "generating": "steps"}


class ProgressLogger:
    """Records progress on the job and logs it at most every 2 s (and on phase changes);
    when a person watches the supervisor on a terminal it also draws a progress bar."""

    def __init__(self, active: ActiveJob) -> None:
        self.active = active
        self._logged_at = 0.0
        self._bar: TerminalProgress | None = None

    def _draw(self, msg: ipc.Progress) -> None:
        label = f"{self.active.job_id} {msg.phase}" + (f" {msg.message}" if msg.message else "")
        bar = self._bar
        if bar is None or msg.phase != self.active.phase:
            if bar is not None:
                bar.close()
            bar = self._bar = TerminalProgress(label, unit=_BAR_UNITS.get(msg.phase, "steps"))
        if bar.enabled:
            bar.file_progress(label, msg.step, msg.total)

    def __call__(self, msg: ipc.Progress) -> None:
        a = self.active
        self._draw(msg)
        phase_changed = msg.phase != a.phase
        a.phase, a.step, a.total, a.detail = msg.phase, msg.step, msg.total, msg.message
        now = time.monotonic()
        if (
            phase_changed
            or now - self._logged_at >= PROGRESS_LOG_INTERVAL_S
            or msg.step == msg.total
        ):
            self._logged_at = now
            detail = f" {msg.message}" if msg.message else ""
            log.info(
                "progress job %s phase=%s step=%d/%d%s",
                a.job_id,
                msg.phase,
                msg.step,
                msg.total,
                detail,
                extra={"job_id": a.job_id},
            )
