"""The local studio's server shuts down cleanly while a client's close is in flight."""

from __future__ import annotations

import base64
import os
import socket
import time

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

import localstudio.server as server_module
from localstudio.server import ShutdownSafeWebSocketProtocol


async def _accept_and_flood(ws: WebSocket) -> None:
    await ws.accept()
    while True:  # more than the client will ever read: the server's write buffer stays full
        await ws.send_bytes(bytes(1 << 20))


def _open_and_send_close(port: int) -> socket.socket:
    """A raw client: upgrade, let the server's output back up, then send a masked close frame
    and keep the TCP connection open. The server answers the close behind its unsent data,
    so its transport cannot finish closing: the connection stays CLOSING, as it does for a
    moment whenever a client's close arrives just before a shutdown."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    time.sleep(0.5)  # the flood fills both socket buffers and the server's write buffer
    mask = os.urandom(4)
    payload = (1000).to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + masked)
    return sock


async def _shutdown_after_client_close(monkeypatch: pytest.MonkeyPatch, protocol: type) -> None:
    monkeypatch.setattr(server_module, "ShutdownSafeWebSocketProtocol", protocol)
    app = Starlette(routes=[WebSocketRoute("/ws", _accept_and_flood)])
    server = server_module._uvicorn_server(app, "127.0.0.1", 0)
    await server_module._start(server, "127.0.0.1", 0)
    port = server.servers[0].sockets[0].getsockname()[1]
    sock = await anyio.to_thread.run_sync(_open_and_send_close, port)
    await anyio.sleep(0.2)  # the server reads the close frame
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown)
            await anyio.sleep(0.2)
            sock.close()  # lets the transport finish, so a clean shutdown completes
    finally:
        sock.close()


@pytest.mark.anyio
async def test_uvicorns_own_protocol_aborts_shutdown_on_a_closing_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upstream race this module works around; if a uvicorn release fixes it, this
    # test says the workaround can go.
    with pytest.RaisesGroup(InvalidState):
        await _shutdown_after_client_close(monkeypatch, WebSocketsSansIOProtocol)


@pytest.mark.anyio
async def test_the_local_studio_protocol_shuts_down_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _shutdown_after_client_close(monkeypatch, ShutdownSafeWebSocketProtocol)
