"""The WebSocket driver: upgrade auth, then three tasks per connection.

``GET /graphics/api/workers/{workerId}/connect`` checks ``Authorization: Bearer <token>``
before the upgrade (a wrong or unknown token gets an HTTP 401 and no socket), echoes the
``studio-worker-v1`` sub-protocol when offered, and then runs, in one task group:
- the reader: decodes each text frame once and hands it to the dispatcher; binary or
  undecodable frames are a protocol violation (error frame + close 4002); a frame over
  ``DEFAULT_MAX_FRAME_BYTES`` (16 MiB) never reaches it: the WebSocket layer closes the
  connection with 1009 (message too big), what a studio behind any WebSocket server does,
  and the reader logs it;
- the writer: the only task that writes to the socket, draining the session's outbox in
  order; a close request is sent last and ends the whole connection;
- the heartbeat watchdog: a session with no hello/heartbeat for ``heartbeat_timeout_s``
  is closed (1000, ``heartbeat timeout``), which releases its claims.
Whatever way the connection ends, the dispatcher is told once, and it releases claims.
This module holds no protocol rules itself.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from anyio import CancelScope
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from localstudio.auth import bearer_token
from localstudio.dispatcher import Dispatcher
from localstudio.session import CloseRequest, WorkerSession
from protocol.studio import (
    CLOSE_MESSAGE_TOO_BIG,
    DEFAULT_MAX_FRAME_BYTES,
    SUBPROTOCOL,
    CloseCode,
    FrameError,
    decode_inbound,
    encode_frame,
)

log = logging.getLogger("localstudio")

HEARTBEAT_TIMEOUT_REASON: Final = "heartbeat timeout"
_UNAUTHORIZED_BODY: Final = b'{"error":"invalid or missing worker token"}'


async def serve_worker_socket(
    websocket: WebSocket, dispatcher: Dispatcher, heartbeat_timeout_s: float
) -> None:
    """The whole life of one worker connection, from upgrade to released claims."""
    worker_id: str = websocket.path_params["worker_id"]
    token = bearer_token(websocket.headers)
    if token is None or not dispatcher.token_valid(worker_id, token):
        log.warning("refused websocket upgrade for %s: bad token", worker_id)
        denial = Response(_UNAUTHORIZED_BODY, status_code=401, media_type="application/json")
        await websocket.send_denial_response(denial)
        return
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    session = dispatcher.open_session(worker_id)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_write_frames, websocket, session, tg.cancel_scope)
            tg.start_soon(_watch_heartbeats, session, heartbeat_timeout_s)
            await _read_frames(websocket, session, dispatcher)
            if not session.closing:
                tg.cancel_scope.cancel()  # the worker went away; the writer has nothing to do
    finally:
        dispatcher.end_session(session)
        session.close_streams()


async def _read_frames(
    websocket: WebSocket, session: WorkerSession, dispatcher: Dispatcher
) -> None:
    """Decode and apply frames until the peer disconnects or the session starts closing."""
    while not session.closing:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect" and message.get("code") == (
            CLOSE_MESSAGE_TOO_BIG
        ):
            log.warning(
                "worker %s sent a frame over the %d-byte limit; its connection is closed (1009)",
                session.worker_id,
                DEFAULT_MAX_FRAME_BYTES,
            )
        if message["type"] == "websocket.disconnect" or session.closing:
            return  # gone, or closed meanwhile (replaced, timed out): ignore the rest
        text = message.get("text")
        if text is None:
            dispatcher.refuse(session, "binary frames are not part of the protocol")
            return
        try:
            frame = decode_inbound(text)
        except FrameError as exc:
            dispatcher.refuse(session, str(exc))
            return
        dispatcher.handle_frame(session, frame)


async def _write_frames(websocket: WebSocket, session: WorkerSession, scope: CancelScope) -> None:
    """Send the outbox in order; after a close request (or a dead socket) end everything."""
    try:
        async for item in session.outbox:
            if isinstance(item, CloseRequest):
                await websocket.close(item.code, item.reason)
                return
            await websocket.send_text(encode_frame(item))
    except (WebSocketDisconnect, OSError) as exc:
        log.info("worker %s: socket gone while writing: %r", session.worker_id, exc)
    finally:
        scope.cancel()


async def _watch_heartbeats(session: WorkerSession, timeout_s: float) -> None:
    """Close the session once ``timeout_s`` pass without a hello or heartbeat."""
    while not session.closing:
        remaining = session.last_heartbeat + timeout_s - anyio.current_time()
        if remaining <= 0:
            log.warning("worker %s: no heartbeat for %gs; closing", session.worker_id, timeout_s)
            session.close(CloseCode.NORMAL, HEARTBEAT_TIMEOUT_REASON)
            return
        await anyio.sleep(remaining)
