"""The local studio's server shuts down cleanly while a client's close is in flight."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State

import localstudio.server as server_module
from localstudio.server import ShutdownSafeWebSocketProtocol


async def _accept_and_flood(ws: WebSocket) -> None:
    await ws.accept()
    while True:  # more than the client will ever read: the server's write buffer stays full
        await ws.send_bytes(bytes(1 << 20))


def _upgrade(port: int) -> socket.socket:
    """A raw client that reads only the upgrade answer, through a small receive buffer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def _send_close(sock: socket.socket) -> None:
    mask = os.urandom(4)
    payload = (1000).to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + masked)


async def _until(condition: Callable[[], bool]) -> None:
    # The protocol's state has no event to wait on; the deadline bounds the poll.
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.01)


@asynccontextmanager
async def _closing_connection(
    monkeypatch: pytest.MonkeyPatch, protocol: type[WebSocketsSansIOProtocol]
) -> AsyncIterator[uvicorn.Server]:
    """A server with one WebSocket connection in the window the race needs: the client's
    close answered, the transport unable to finish closing behind unsent data."""
    monkeypatch.setattr(server_module, "ShutdownSafeWebSocketProtocol", protocol)
    app = Starlette(routes=[WebSocketRoute("/ws", _accept_and_flood)])
    server = server_module._uvicorn_server(app, "127.0.0.1", 0)
    await server_module._start(server, "127.0.0.1", 0)
    port = server.servers[0].sockets[0].getsockname()[1]
    sock = await anyio.to_thread.run_sync(_upgrade, port)
    try:
        connections = server.server_state.connections

        def the_connection() -> WebSocketsSansIOProtocol:
            (conn,) = connections
            assert isinstance(conn, WebSocketsSansIOProtocol)
            return conn

        await _until(lambda: len(connections) == 1 and not the_connection().writable.is_set())
        await anyio.to_thread.run_sync(_send_close, sock)
        await _until(lambda: the_connection().conn.state is State.CLOSING)
        assert not the_connection().close_sent
        yield server
    finally:
        sock.close()
        for conn in list(server.server_state.connections):
            conn.transport.abort()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_uvicorns_own_protocol_aborts_shutdown_on_a_closing_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The upstream race this module works around; if a uvicorn release fixes it, this
    # test says the workaround can go.
    async with _closing_connection(monkeypatch, WebSocketsSansIOProtocol) as server:
        with pytest.raises(InvalidState):
            await server.shutdown()


@pytest.mark.anyio
async def test_the_local_studio_protocol_drops_a_closing_connection_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with _closing_connection(monkeypatch, ShutdownSafeWebSocketProtocol) as server:
        with anyio.fail_after(server_module.SHUTDOWN_GRACE_S / 2):
            await server.shutdown()
        assert not server.server_state.connections
