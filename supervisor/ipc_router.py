"""The supervisor's end of the engine IPC: one ROUTER socket in a private run directory.

Each host generation connects a DEALER whose identity is ``<slot id>.<generation>``, so a
message from a host that was already replaced lands in no inbox and is dropped. Frames are
received without copies; a result payload stays a ZeroMQ frame until it is uploaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import anyio
import zmq
import zmq.asyncio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from protocol import ipc

log = logging.getLogger("supervisor.ipc")

INBOX_SIZE: Final = 1024


class Inbound:
    """One message from a host: the decoded header and the raw payload frame, if any."""

    __slots__ = ("message", "payload")

    def __init__(self, message: ipc.HostMessage, payload: zmq.Frame | None) -> None:
        self.message = message
        self.payload = payload


class IpcRouter:
    def __init__(self, run_dir: Path) -> None:
        self.endpoint = f"ipc://{run_dir / 'engines.sock'}"
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
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
        assert self._sock is not None, "router not serving"
        await self._sock.send_multipart([identity.encode(), ipc.encode(msg)])

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(self.endpoint)
        self._sock = sock
        try:
            task_status.started()
            while True:
                frames = await sock.recv_multipart(copy=False)
                self._dispatch(frames)
        finally:
            for send in self._inboxes.values():
                send.close()
            self._inboxes.clear()
            sock.close(linger=0)
            self._sock = None
            self._ctx.term()

    def _dispatch(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        inbox = self._inboxes.get(identity)
        if inbox is None:
            return  # a replaced host generation, or a stranger: ignore
        if len(frames) not in (2, 3):
            log.warning("refused a %d-frame message from %s", len(frames), identity.decode())
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
