"""A scriptable studio for session tests: a real Starlette app under uvicorn on 127.0.0.1
(port 0, bound before the server starts so clients never race it) with the WebSocket
``connect`` route and the multipart ``complete`` route. Each accepted WebSocket is handed
to the test as a ``PeerConnection`` that the test drives frame by frame.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import uvicorn
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from localstudio.server import ShutdownSafeWebSocketProtocol
from protocol import studio
from protocol.tasks import ModelSource, Task
from tests.support.fake_studio import Part, parse_multipart

FRAME_TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass
class Upload:
    worker_id: str
    job_id: str
    headers: dict[str, str]
    parts: list[Part]


class PeerConnection:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.headers = {k.lower(): v for k, v in ws.headers.items()}
        self.worker_id = ws.path_params["worker_id"]
        self.received: list[studio.WorkerInbound] = []
        self.closed = anyio.Event()

    async def recv(self, timeout_s: float = FRAME_TIMEOUT_S) -> studio.WorkerInbound:
        with anyio.fail_after(timeout_s):
            text = await self.ws.receive_text()
        frame = studio.decode_inbound(text)
        self.received.append(frame)
        return frame

    async def expect(
        self, kind: type[T], timeout_s: float = FRAME_TIMEOUT_S, *, skip: tuple[type, ...] = ()
    ) -> T:
        """The next frame of ``kind``, skipping heartbeats/log batches (and ``skip``)."""
        passable = (studio.Heartbeat, studio.LogBatch, *skip)
        with anyio.fail_after(timeout_s):
            while True:
                frame = await self.recv(timeout_s)
                if isinstance(frame, kind):
                    return frame
                if not isinstance(frame, passable):
                    raise AssertionError(f"expected {kind.__name__}, got {frame!r}")

    async def send(self, frame: studio.WorkerOutbound) -> None:
        await self.ws.send_text(studio.encode_frame(frame))

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_text(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.ws.close(code, reason)

    async def handshake(self, worker_id: str = "w-1") -> studio.Hello:
        hello = await self.expect(studio.Hello)
        await self.send(studio.Welcome(worker_id=worker_id, server_time="now"))
        return hello

    async def wait_closed(self, timeout_s: float = FRAME_TIMEOUT_S) -> int | None:
        """Drain frames until the worker closes; returns the close code."""
        with anyio.fail_after(timeout_s):
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self.closed.set()
                    code: int | None = message.get("code")
                    return code
                if message.get("text"):
                    self.received.append(studio.decode_inbound(message["text"]))


@dataclass
class StudioPeer:
    port: int = 0
    upgrade_status: int | None = None
    upgrade_body: bytes = b""
    upload_statuses: list[int] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    upload_attempts: int = 0
    silent_upgrade: bool = False
    connections: list[PeerConnection] = field(default_factory=list)
    _send: MemoryObjectSendStream[PeerConnection] | None = None
    _receive: MemoryObjectReceiveStream[PeerConnection] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def next_connection(self, timeout_s: float = FRAME_TIMEOUT_S) -> PeerConnection:
        assert self._receive is not None
        with anyio.fail_after(timeout_s):
            return await self._receive.receive()

    async def _connect(self, ws: WebSocket) -> None:
        if self.silent_upgrade:
            await anyio.sleep_forever()
        if self.upgrade_status is not None:
            await ws.send_denial_response(Response(self.upgrade_body, self.upgrade_status))
            return
        await ws.accept(subprotocol=studio.SUBPROTOCOL)
        conn = PeerConnection(ws)
        self.connections.append(conn)
        assert self._send is not None
        await self._send.send(conn)
        # Keep the ASGI handler alive until the test (or the worker) closes the socket.
        with contextlib.suppress(WebSocketDisconnect):
            await conn.closed.wait()

    async def _complete(self, request: Request) -> Response:
        self.upload_attempts += 1
        status = self.upload_statuses.pop(0) if self.upload_statuses else 200
        body = await request.body()
        if status >= 300:
            return JSONResponse({"error": f"scripted {status}"}, status)
        parts = parse_multipart(request.headers["content-type"], body)
        self.uploads.append(
            Upload(
                request.path_params["worker_id"],
                request.path_params["job_id"],
                {k.lower(): v for k, v in request.headers.items()},
                parts,
            )
        )
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                WebSocketRoute("/graphics/api/workers/{worker_id}/connect", self._connect),
                Route(
                    "/graphics/api/workers/{worker_id}/jobs/{job_id}/complete",
                    self._complete,
                    methods=["POST"],
                ),
            ]
        )


@contextlib.asynccontextmanager
async def running_peer(peer: StudioPeer | None = None) -> AsyncIterator[StudioPeer]:
    peer = peer or StudioPeer()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    peer.port = sock.getsockname()[1]
    peer._send, peer._receive = anyio.create_memory_object_stream[PeerConnection](16)
    config = uvicorn.Config(
        peer.app(),
        log_level="warning",
        lifespan="off",
        ws=ShutdownSafeWebSocketProtocol,  # the local studio's, for the same race
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve([sock])
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                yield peer
            finally:
                with anyio.CancelScope(shield=True):
                    for conn in peer.connections:
                        await conn.close()
                    server.should_exit = True
                    server.force_exit = True
                    with anyio.move_on_after(5):
                        await stopped.wait()
                tg.cancel_scope.cancel()
    finally:
        sock.close()
        peer._send.close()
        peer._receive.close()


def make_offer(
    job_id: str,
    task: Task,
    source: ModelSource,
    model: str,
    *,
    asset_name: str = "game-1/creatures/fox",
    vram_gb_estimate: float = 1.0,
) -> studio.Offer:
    """An ``offer`` frame as the studio sends it."""
    return studio.Offer(
        claim=studio.JobOfferClaim(
            job_id=job_id,
            game_id="game-1",
            asset_name=asset_name,
            model=model,
            vram_gb_estimate=vram_gb_estimate,
            task=task,
            model_source=source,
        )
    )
