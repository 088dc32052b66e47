"""The supervisor's end of the engine IPC: one ROUTER socket in a private run directory.

Each host generation connects a DEALER whose identity is ``<slot id>.<generation>``, so a
message from a host that was already replaced lands in no inbox and is dropped. Frames are
received without copies; a result payload stays a ZeroMQ frame until it is uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final, cast

import anyio
import anyio.lowlevel
import zmq
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from protocol import ipc

log = logging.getLogger("supervisor.ipc")

INBOX_SIZE: Final = 1024
MAX_BURST: Final = 256  # messages handled per wake-up before the loop lets others run


class Inbound:
    """One message from a host: the decoded header and the raw payload frame, if any."""

    __slots__ = ("message", "payload")

    def __init__(self, message: ipc.HostMessage, payload: zmq.Frame | None) -> None:
        self.message = message
        self.payload = payload


class IpcRouter:
    """The ROUTER socket, driven from the event loop without ``zmq.asyncio`` futures.

    One task (``serve``) waits for the socket's ``ZMQ_FD`` to turn readable and then drains
    every message that is ready, without yielding per message: a job's progress, heartbeat
    and result arrive in bursts, and a future per message cost more than the message.
    ``ZMQ_FD`` is edge-like (any operation on the socket may consume the signal for
    messages that arrived meanwhile), so ``send`` drains too before it returns.
    """

    def __init__(self, run_dir: Path) -> None:
        self.endpoint = f"ipc://{run_dir / 'engines.sock'}"
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._inboxes: dict[bytes, MemoryObjectSendStream[Inbound]] = {}

    def open_inbox(self, identity: str) -> MemoryObjectReceiveStream[Inbound]:
        send, receive = anyio.create_memory_object_stream[Inbound](INBOX_SIZE)
        self._inboxes[identity.encode()] = send
        return receive

    def close_inbox(self, identity: str) -> None:
        send = self._inboxes.pop(identity.encode(), None)
        if send is not None:
            send.close()

    async def send(self, identity: str, msg: ipc.SupervisorMessage) -> None:
        """Queue ``msg`` for the host ``identity``; never blocks (see ``send_nowait``)."""
        self.send_nowait(identity, msg)

    def send_nowait(self, identity: str, msg: ipc.SupervisorMessage) -> None:
        """Queue ``msg`` for the host ``identity``.

        Raises ``zmq.ZMQError``: ``EHOSTUNREACH`` when no host with that identity is
        connected, ``EAGAIN`` when it has ``SNDHWM`` (1000) messages unread, which only a
        frozen host does (its watchdog deals with it).
        """
        sock = self._sock
        assert sock is not None, "router not serving"
        try:
            sock.send_multipart([identity.encode(), ipc.encode(msg)], zmq.NOBLOCK)
        finally:
            self._drain(sock, limit=None)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(self.endpoint)
        self._sock = sock
        fd = cast(int, sock.getsockopt(zmq.FD))
        try:
            task_status.started()
            while True:
                if self._drain(sock, limit=MAX_BURST) < MAX_BURST:
                    await anyio.wait_readable(fd)
                else:
                    await anyio.lowlevel.checkpoint()  # a flood must not starve the loop
        finally:
            for send in self._inboxes.values():
                send.close()
            self._inboxes.clear()
            self._sock = None
            sock.close(linger=0)
            self._ctx.term()

    def _drain(self, sock: zmq.Socket[bytes], limit: int | None) -> int:
        """Dispatch the messages ready now (at most ``limit``); returns how many."""
        count = 0
        while (limit is None or count < limit) and _readable(sock):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._dispatch(frames)
            count += 1
        return count

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        inbox = self._inboxes.get(identity)
        if inbox is None:
            return  # a replaced host generation, or a stranger: ignore
        if len(frames) not in (2, 3):
            log.warning("refused a %d-frame message from %s", len(frames) - 1, identity.decode())
            return
        try:
            msg = ipc.decode_host(frames[1].buffer)
        except ipc.IpcDecodeError as exc:
            log.warning("refused a message from %s: %s", identity.decode(), exc)
            return
        payload = frames[2] if len(frames) == 3 else None
        try:
            inbox.send_nowait(Inbound(msg, payload))
        except anyio.WouldBlock:
            log.error("inbox of %s is full; dropping %s", identity.decode(), type(msg).__name__)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting; reading ``ZMQ_EVENTS`` also re-arms ``ZMQ_FD``."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
