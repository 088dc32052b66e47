"""The local control socket: ``supervisor status|pause|resume`` talk to the running
supervisor through a Unix socket beside the config file (or, for a config path too long for
a socket address, in a private per-user temp directory), readable only by its user (0600).

One JSON request line in, one JSON reply line out. The status reply is built from the
pool's slots and the ``WorkerState`` at the moment of asking: no second bookkeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path
from typing import Final, Literal

import anyio
import anyio.abc
import msgspec

from supervisor.errors import ControlError, ControlListenError, SupervisorNotRunning
from supervisor.lanes.lane import Lane
from supervisor.ops.status_report import StatusReport, build_status
from supervisor.pool.engine_pool import EnginePool
from supervisor.worker_state import WorkerState

log = logging.getLogger("supervisor.control")

SOCKET_NAME: Final = "supervisor.sock"
REQUEST_MAX_BYTES: Final = 4096


class ControlRequest(msgspec.Struct, omit_defaults=True):
    cmd: Literal["status", "pause", "resume"]
    lane: str | None = None  # one lane (``--lane NAME``); None: every lane


class ControlReply(msgspec.Struct, omit_defaults=True):
    ok: bool
    message: str = ""
    status: StatusReport | None = None


# sun_path holds 108 bytes on Linux (104 on the BSDs), the terminating NUL included.
SOCKET_PATH_MAX_BYTES: Final = 100


def socket_path(config_path: Path) -> Path:
    """Beside the config file; a config so deep that the path would not fit in a socket
    address gets a socket in a private per-user directory under the temp dir instead, named
    from the config's directory so every ``supervisor`` command finds the same one."""
    beside = config_path.parent / SOCKET_NAME
    if len(os.fsencode(beside)) <= SOCKET_PATH_MAX_BYTES:
        return beside
    digest = hashlib.sha256(os.fsencode(config_path.parent.absolute())).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"studio-worker-{os.getuid()}"
    return private / f"{digest}.sock"


def _ensure_private_dir(path: Path) -> None:
    """The fallback directory is shared ground (/tmp): it must be ours and closed to others."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ControlListenError(
            f"{path} is not a private directory of this user (owner, mode 0700): remove it "
            "or move the config to a shorter path"
        )


def set_paused(state: WorkerState, paused: bool, lane: str | None = None) -> str:
    """Pause or resume one lane's claiming (``lane`` names it in the texts when there
    are several)."""
    of = f"lane {lane}: " if lane else ""
    if state.paused == paused:
        return of + ("already paused" if paused else "not paused")
    state.paused = paused
    state.nudge()
    extra = {"lane": lane} if lane else {}
    if paused:
        log.info("claiming paused by operator; new offers are rejected until resumed", extra=extra)
        return of + "paused: new offers are rejected until `supervisor resume`"
    log.info("claiming resumed by operator; accepting new offers again", extra=extra)
    return of + "resumed: accepting new offers again"


def set_lanes_paused(lanes: list[Lane], paused: bool, name: str | None) -> ControlReply:
    """``pause`` / ``resume`` every lane, or the one named."""
    chosen = [lane for lane in lanes if name is None or lane.name == name]
    if not chosen:
        known = ", ".join(lane.name for lane in lanes)
        return ControlReply(ok=False, message=f"no lane `{name}` here; the lanes are {known}")
    several = len(lanes) > 1
    texts = [set_paused(lane.state, paused, lane.name if several else None) for lane in chosen]
    return ControlReply(ok=True, message="\n".join(texts))


_request_decoder: Final = msgspec.json.Decoder(ControlRequest)
_reply_decoder: Final = msgspec.json.Decoder(ControlReply)


class ControlServer:
    def __init__(self, path: Path, pool: EnginePool, lanes: list[Lane]) -> None:
        self.path = path
        self.pool = pool
        self.lanes = lanes

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        old_umask = os.umask(0o077)
        try:
            if self.path.parent.name.startswith("studio-worker-"):
                _ensure_private_dir(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                if self.path.is_socket():
                    self.path.unlink()
            listener = await anyio.create_unix_listener(self.path)
            self.path.chmod(0o600)
        except OSError as exc:
            raise ControlListenError(
                f"cannot open the control socket {self.path}: {exc.strerror or exc}"
            ) from None
        finally:
            os.umask(old_umask)
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
                return ControlReply(ok=True, status=build_status(self.pool, self.lanes))
            case "pause":
                return set_lanes_paused(self.lanes, True, request.lane)
            case "resume":
                return set_lanes_paused(self.lanes, False, request.lane)


async def _read_line(stream: anyio.abc.SocketStream) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < REQUEST_MAX_BYTES:
        buf += await stream.receive()
    return buf.split(b"\n", 1)[0]


def ask(path: Path, cmd: str, timeout_s: float = 5.0, *, lane: str | None = None) -> ControlReply:
    """Blocking client for the CLI. Raises SupervisorNotRunning if nothing listens on
    ``path``, ControlError if what listens gives no usable answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            request = ControlRequest(cmd, lane)  # type: ignore[arg-type]
            sock.sendall(msgspec.json.encode(request) + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise SupervisorNotRunning(path) from exc
    except TimeoutError:
        raise ControlError(
            f"the supervisor did not answer on {path} within {timeout_s:g} s; it may be "
            "stuck: see its log (journalctl -u studio-worker)"
        ) from None
    except PermissionError:
        raise ControlError(
            f"no permission to use {path}: run this as the user the supervisor runs as "
            "(e.g. `sudo -u studio-worker supervisor --config <its config> ...`)"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the supervisor on {path}: {exc}") from None
    try:
        return _reply_decoder.decode(b"".join(chunks).strip())
    except msgspec.DecodeError as exc:
        raise ControlError(f"unreadable answer from the supervisor on {path}: {exc}") from None
