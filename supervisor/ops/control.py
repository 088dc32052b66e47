"""The local control socket: ``supervisor status|pause|resume`` talk to the running
supervisor through a Unix socket beside the config file, readable only by its user (0600).

One JSON request line in, one JSON reply line out. The status reply is built from the
pool's slots and the ``WorkerState`` at the moment of asking: no second bookkeeping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Final, Literal

import anyio
import anyio.abc
import msgspec

from supervisor.pool.engine_pool import EnginePool
from supervisor.worker_state import WorkerState

log = logging.getLogger("supervisor.control")

SOCKET_NAME: Final = "supervisor.sock"
REQUEST_MAX_BYTES: Final = 4096


class ControlRequest(msgspec.Struct):
    cmd: Literal["status", "pause", "resume"]


class SlotView(msgspec.Struct):
    slot: str
    engine: str
    gpu: int | None
    state: str
    pid: int | None
    job_id: str | None
    jobs_done: int
    restarts: int
    restart_causes: dict[str, int]
    last_exit: str | None
    rss_bytes: int | None
    vram_bytes: int | None
    model_loads: int
    parked_for_s: float | None


class JobView(msgspec.Struct):
    job_id: str
    kind: str
    model: str
    slot: str
    running_s: float
    phase: str
    step: int
    total: int


class StatusReport(msgspec.Struct):
    pid: int
    worker_id: str | None
    session: str
    paused: bool
    shutting_down: bool
    seconds_since_heartbeat_ack: float | None
    reconnects: int
    job_outcomes: dict[str, int]
    jobs: list[JobView]
    slots: list[SlotView]


class ControlReply(msgspec.Struct, omit_defaults=True):
    ok: bool
    message: str = ""
    status: StatusReport | None = None


def socket_path(config_path: Path) -> Path:
    return config_path.parent / SOCKET_NAME


def build_status(pool: EnginePool, state: WorkerState) -> StatusReport:
    now = time.monotonic()
    slots = []
    for s in pool.slots:
        hb = s.last_heartbeat
        slots.append(
            SlotView(
                slot=s.slot_id,
                engine=s.engine,
                gpu=s.spec.gpu,
                state=s.state.value,
                pid=s.pid,
                job_id=s.job_id,
                jobs_done=s.jobs_done,
                restarts=s.restarts,
                restart_causes={str(c): n for c, n in s.restart_causes.items()},
                last_exit=s.last_exit,
                rss_bytes=hb.rss_bytes if hb else None,
                vram_bytes=hb.vram_bytes if hb else None,
                model_loads=hb.model_loads if hb else 0,
                parked_for_s=round(s.parked_until - now, 1) if s.parked_until else None,
            )
        )
    jobs = [
        JobView(
            j.job_id,
            j.kind,
            j.model,
            j.slot_id,
            round(now - j.started, 1),
            j.phase,
            j.step,
            j.total,
        )
        for j in state.jobs.values()
    ]
    ack = state.seconds_since_heartbeat_ack()
    return StatusReport(
        pid=os.getpid(),
        worker_id=state.worker_id,
        session=state.phase.value,
        paused=state.paused,
        shutting_down=state.shutting_down,
        seconds_since_heartbeat_ack=round(ack, 1) if ack is not None else None,
        reconnects=state.reconnects,
        job_outcomes=dict(state.job_outcomes),
        jobs=jobs,
        slots=slots,
    )


def set_paused(state: WorkerState, paused: bool) -> str:
    if state.paused == paused:
        return "already paused" if paused else "not paused"
    state.paused = paused
    state.nudge()
    if paused:
        log.info("claiming paused by operator; new offers are rejected until resumed")
        return "paused: new offers are rejected until `supervisor resume`"
    log.info("claiming resumed by operator; accepting new offers again")
    return "resumed: accepting new offers again"


_request_decoder: Final = msgspec.json.Decoder(ControlRequest)
_reply_decoder: Final = msgspec.json.Decoder(ControlReply)


class ControlServer:
    def __init__(self, path: Path, pool: EnginePool, state: WorkerState) -> None:
        self.path = path
        self.pool = pool
        self.state = state

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        old_umask = os.umask(0o077)
        try:
            listener = await anyio.create_unix_listener(self.path)
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)
        try:
            async with listener:
                task_status.started()
                await listener.serve(self._handle)
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    data = await _read_line(stream)
                reply = self._answer(data)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
                return
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(msgspec.json.encode(reply) + b"\n")

    def _answer(self, data: bytes) -> ControlReply:
        try:
            request = _request_decoder.decode(data)
        except msgspec.DecodeError as exc:
            return ControlReply(ok=False, message=f"bad request: {exc}")
        match request.cmd:
            case "status":
                return ControlReply(ok=True, status=build_status(self.pool, self.state))
            case "pause":
                return ControlReply(ok=True, message=set_paused(self.state, True))
            case "resume":
                return ControlReply(ok=True, message=set_paused(self.state, False))


async def _read_line(stream: anyio.abc.SocketStream) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < REQUEST_MAX_BYTES:
        buf += await stream.receive()
    return buf.split(b"\n", 1)[0]


class SupervisorNotRunning(Exception):
    pass


def ask(path: Path, cmd: str, timeout_s: float = 5.0) -> ControlReply:
    """Blocking client for the CLI; raises SupervisorNotRunning if nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            sock.sendall(msgspec.json.encode(ControlRequest(cmd)) + b"\n")  # type: ignore[arg-type]
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise SupervisorNotRunning(f"no supervisor is running for this config ({path})") from exc
    return _reply_decoder.decode(b"".join(chunks).strip())
