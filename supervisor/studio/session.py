"""One studio session: connect, hello, wait for welcome, then serve until it ends.

Nothing but ``hello`` is sent before ``welcome`` (a heartbeat racing the studio's async
hello auth once killed sessions). After it, four tasks run under one task group: the
heartbeat pump (5 s, capabilities rebuilt from the live config), the log shipper (1 s),
the reader (every receive bounded by the 20 s read-idle timeout) and the stop watcher,
which on a graceful stop rejects new offers, lets running jobs finish within the drain
grace and ships the last log batch. Jobs run in the same task group: a job whose session
dies is abandoned (its host is told to cancel, and the job runner logs it with its id)
because the studio has already released its claim, and a result for it would be refused.
Frames go out no larger than the studio's frame limit (config ``max_frame_bytes``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.abc

from protocol import studio
from protocol.studio import (
    CompleteAck,
    Error,
    FailAck,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LogBatch,
    Offer,
    Welcome,
    WorkerOutbound,
)
from supervisor.errors import AuthFailed, SessionError, SessionFatal, SessionTransportError
from supervisor.live_config import LiveConfig
from supervisor.pool.lane_pool import LanePool
from supervisor.session_state import SessionEvent
from supervisor.studio.capabilities import build_capabilities, summary_line
from supervisor.studio.http import StudioHttp
from supervisor.studio.job_runner import JobRunner
from supervisor.studio.log_queue import LogShipQueue
from supervisor.studio.urls import build_connect_url
from supervisor.studio.ws_client import CONNECT_TIMEOUT_S, READ_IDLE_TIMEOUT_S, StudioSocket
from supervisor.worker_state import WorkerState

log = logging.getLogger("supervisor.session")

HEARTBEAT_INTERVAL_S: Final = 5.0
LOG_SHIP_INTERVAL_S: Final = 1.0


@dataclass(frozen=True)
class SessionTimings:
    heartbeat_s: float = HEARTBEAT_INTERVAL_S
    log_ship_s: float = LOG_SHIP_INTERVAL_S
    read_idle_s: float = READ_IDLE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    drain_grace_s: float = 30.0
    reconnect_base_s: float = 1.0
    reconnect_max_s: float = 30.0


@dataclass
class SessionDeps:
    config: LiveConfig
    pool: LanePool
    state: WorkerState
    logs: LogShipQueue
    http: StudioHttp
    stop: anyio.Event  # graceful stop requested (first signal)
    timings: SessionTimings
    machine_suffix: str = ""  # a lane's ``/gpuN`` in capabilities.machineName


def _session_errors(group: BaseExceptionGroup[BaseException]) -> list[SessionError]:
    found: list[SessionError] = []
    for exc in group.exceptions:
        if isinstance(exc, SessionError):
            found.append(exc)
        elif isinstance(exc, BaseExceptionGroup):
            found.extend(_session_errors(exc))
    return found


def first_session_error(group: BaseExceptionGroup[BaseException]) -> SessionError | None:
    """The error that decides what happens next: one that stops the worker (auth, fatal)
    wins over a transport error raised by another pump in the same instant."""
    errors = _session_errors(group)
    for kind in (AuthFailed, SessionFatal, SessionError):
        for exc in errors:
            if isinstance(exc, kind):
                return exc
    return None


class StudioSession:
    def __init__(self, deps: SessionDeps) -> None:
        self.deps = deps
        self.welcomed = False

    def capabilities(self) -> studio.Capabilities:
        d = self.deps
        cfg = d.config.current()
        return build_capabilities(
            cfg,
            d.pool.models_per_kind(),
            paused=d.state.paused or d.state.shutting_down,
            max_concurrent_jobs=d.pool.capacity(),
            vram_gb=d.pool.advertised_gb(cfg.vram_threshold_gb),
            machine_suffix=d.machine_suffix,
        )

    async def run(self) -> None:
        """Serve one session; returns after a graceful stop, raises SessionError otherwise."""
        d = self.deps
        cfg = d.config.current()
        if not (cfg.worker_id and cfg.auth_token):
            # Credentials removed while running (`register --reset`): nothing to connect as.
            raise SessionFatal("worker_id or auth_token missing; run register")
        log.info("connecting to %s", cfg.api_base_url)
        url = build_connect_url(cfg.api_base_url, cfg.worker_id)
        sock = await StudioSocket.connect(
            url,
            cfg.auth_token,
            timeout_s=d.timings.connect_timeout_s,
            worker_id=cfg.worker_id,
            max_frame_bytes=cfg.max_frame_bytes,
        )
        d.state.session_event(SessionEvent.CONNECTED)
        try:
            caps = self.capabilities()
            log.info("%s", summary_line(caps))
            if caps.vram_total_gb and caps.vram_threshold_gb > caps.vram_total_gb:
                log.warning(
                    "vram_threshold_gb=%.1f exceeds the detected %.1f GB of VRAM; the studio "
                    "may send jobs that do not fit",
                    caps.vram_threshold_gb,
                    caps.vram_total_gb,
                )
            try:
                await sock.send(Hello(auth_token=cfg.auth_token, capabilities=caps))
            except SessionTransportError as exc:
                raise SessionTransportError(f"hello send failed: {exc}") from None
            await self._await_welcome(sock)
            await self._serve(sock)
        finally:
            await sock.close("session ended")

    async def _await_welcome(self, sock: StudioSocket) -> None:
        d = self.deps
        while True:
            frame = await sock.recv(d.timings.read_idle_s)
            match frame:
                case Welcome():
                    log.info(
                        "server welcomed %s server_time=%s", frame.worker_id, frame.server_time
                    )
                    self.welcomed = True
                    d.state.worker_id = frame.worker_id
                    d.state.sessions_welcomed += 1
                    d.state.session_event(SessionEvent.WELCOMED)
                    return
                case Error():
                    await self._raise_for_error(sock, frame, before_welcome=True)
                case _:
                    log.warning(
                        "unexpected %s frame before welcome; ignored", studio.frame_label(frame)
                    )

    async def _raise_for_error(
        self, sock: StudioSocket, frame: Error, *, before_welcome: bool
    ) -> None:
        reason = f"{frame.code}: {frame.message}"
        if frame.code == studio.ERROR_AUTH_FAILED:
            if before_welcome:
                await sock.close("auth failed")
            raise AuthFailed(reason)
        if before_welcome:
            await sock.close("protocol violation")
        raise SessionFatal(reason)

    async def _serve(self, sock: StudioSocket) -> None:
        d = self.deps
        runner = JobRunner(d.pool, d.state, d.http, d.config, sock)
        try:
            async with anyio.create_task_group() as tg:
                runner.task_group = tg
                tg.start_soon(self._heartbeat_pump, sock)
                tg.start_soon(self._log_shipper, sock)
                tg.start_soon(self._reader, sock, runner)
                await self._wait_for_stop(runner)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # One pump failing ends the session; report why, not the task group wrapper.
            first = first_session_error(group)
            if first is None:
                raise
            raise first from None

    async def _wait_for_stop(self, runner: JobRunner) -> None:
        d = self.deps
        await d.stop.wait()
        d.state.shutting_down = True
        d.state.nudge()
        running = len(d.state.jobs)
        log.info("stop requested; no new offers, waiting for %d running job(s)", running)
        with anyio.move_on_after(d.timings.drain_grace_s):
            await runner.wait_idle()
        if d.state.jobs:
            log.warning(
                "drain grace of %.0f s over; abandoning %d job(s)",
                d.timings.drain_grace_s,
                len(d.state.jobs),
            )
        await self._ship_logs_once(runner.sock)

    async def _heartbeat_pump(self, sock: StudioSocket) -> None:
        """Every 5 s, and at once when what we advertise changes (a slot came back, pause,
        resume): the studio only offers again after a heartbeat, so telling it early saves
        a whole interval after every host restart."""
        d = self.deps
        next_tick = time.monotonic()
        last: tuple[bytes, str | None] | None = None
        while True:
            caps, job = self.capabilities(), d.state.current_job_id()
            snapshot = (studio.encode_json(caps), job)
            now = time.monotonic()
            if now >= next_tick or snapshot != last:
                await sock.send(Heartbeat(capabilities=caps, current_job_id=job))
                last = snapshot
                # Missed ticks are skipped, never sent in a burst.
                while next_tick <= now:
                    next_tick += d.timings.heartbeat_s
            changed = d.state.changed
            with anyio.move_on_after(max(0.0, next_tick - time.monotonic())):
                await changed.wait()

    async def _log_shipper(self, sock: StudioSocket) -> None:
        while True:
            await anyio.sleep(self.deps.timings.log_ship_s)
            await self._ship_logs_once(sock)

    async def _ship_logs_once(self, sock: StudioSocket) -> None:
        batch = self.deps.logs.drain()
        if not batch:
            return
        try:
            await sock.send(LogBatch(entries=batch))
        except BaseException:
            # Failed or cancelled mid-send: a possible duplicate beats losing the batch
            # that explains the outage.
            self.deps.logs.requeue(batch)
            raise

    async def _reader(self, sock: StudioSocket, runner: JobRunner) -> None:
        d = self.deps
        while True:
            frame: WorkerOutbound = await sock.recv(d.timings.read_idle_s)
            match frame:
                case Offer():
                    await runner.on_offer(frame.claim)
                case HeartbeatAck():
                    d.state.last_heartbeat_ack = time.monotonic()
                case CompleteAck():
                    log.info(
                        "studio confirmed completion of job %s",
                        frame.job_id,
                        extra={"job_id": frame.job_id},
                    )
                case FailAck():
                    log.info(
                        "studio confirmed failure of job %s",
                        frame.job_id,
                        extra={"job_id": frame.job_id},
                    )
                case Error():
                    await self._raise_for_error(sock, frame, before_welcome=False)
                case Welcome():
                    log.warning("second welcome in one session; ignored")
