"""The WebSocket transport to the studio (protocol.md §2.1, §2.2, §2.5): connect, send,
receive with a read-idle bound, close. It turns every way a socket can end into one of the
``SessionError`` classes; what to do about it is the session's business. Every frame is
measured before it is sent: one over the studio's frame limit is refused (``FrameTooLarge``)
and never reaches the socket, because the studio would drop the whole session for it.
"""

from __future__ import annotations

import logging
from typing import Final

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from protocol.studio import (
    DEFAULT_MAX_FRAME_BYTES,
    SUBPROTOCOL,
    CloseCode,
    FrameError,
    WorkerInbound,
    WorkerOutbound,
    decode_outbound,
    encode_json,
    frame_label,
)
from supervisor.errors import (
    AuthFailed,
    FrameTooLarge,
    SessionDisconnected,
    SessionProtocolError,
    SessionTransportError,
)

log = logging.getLogger("supervisor.ws")


class _RedactAuthorization(logging.Filter):
    """websockets logs request headers at DEBUG; the bearer token must never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        lowered = message.lower()
        if "authtoken" in lowered:
            # A logged hello frame carries the token in its JSON.
            record.msg, record.args = "> TEXT hello frame <redacted>", ()
        elif "authorization" in lowered:
            head, _, _ = message.partition(":")
            record.msg, record.args = f"{head}: <redacted>", ()
        return True


wire_log = logging.getLogger("supervisor.ws.wire")
wire_log.addFilter(_RedactAuthorization())

CONNECT_TIMEOUT_S: Final = 15.0
READ_IDLE_TIMEOUT_S: Final = 20.0
CLOSE_TIMEOUT_S: Final = 5.0
# After our close frame is out, wait this long for the studio's reply before dropping TCP.
# The Rust worker does not wait for it at all; one second keeps the handshake polite.
CLOSE_HANDSHAKE_WAIT_S: Final = 1.0
UPGRADE_BODY_MAX_CHARS: Final = 300
# The largest frame taken from the studio (an offer carries the whole prompt); what we
# send answers to the studio's limit instead (``max_frame_bytes``).
RECEIVE_MAX_BYTES: Final = 64 * 2**20


def clip_body(body: bytes | bytearray) -> str:
    text = bytes(body).decode(errors="replace").strip()
    if len(text) > UPGRADE_BODY_MAX_CHARS:
        return text[:UPGRADE_BODY_MAX_CHARS] + "…"
    return text


def error_for_close(code: int | None, reason: str) -> AuthFailed | SessionDisconnected:
    """4001 -> AuthFailed; any other code (4002/4003/4004 included) or none -> reconnect."""
    if code == CloseCode.AUTH_FAILED:
        return AuthFailed(f"server closed 4001: {reason}")
    if code is None:
        return SessionDisconnected("connection dropped without a close frame")
    return SessionDisconnected(
        f"server closed {code}: {reason}" if reason else f"server closed {code}"
    )


class StudioSocket:
    def __init__(
        self, ws: ClientConnection, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> None:
        self._ws = ws
        self._closed = False
        self.max_frame_bytes = max_frame_bytes  # the studio's limit on what we send

    @classmethod
    async def connect(
        cls,
        url: str,
        auth_token: str,
        *,
        timeout_s: float = CONNECT_TIMEOUT_S,
        worker_id: str = "",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> StudioSocket:
        try:
            with anyio.fail_after(timeout_s):
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {auth_token}"},
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=CLOSE_HANDSHAKE_WAIT_S,
                    max_size=RECEIVE_MAX_BYTES,
                    user_agent_header=None,
                    logger=wire_log,
                )
        except TimeoutError:
            raise SessionTransportError(f"connect timed out after {timeout_s:g}s") from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise AuthFailed("401 on websocket upgrade") from None
            body = clip_body(exc.response.body or b"")
            detail = f"HTTP {status} on websocket upgrade" + (f": {body}" if body else "")
            raise SessionTransportError(detail) from None
        except (OSError, InvalidHandshake) as exc:
            log.warning("websocket connect failed worker_id=%s error=%s", worker_id, exc)
            raise SessionTransportError(f"websocket connect failed: {exc}") from None
        return cls(ws, max_frame_bytes)

    async def send(self, frame: WorkerInbound) -> None:
        """Send one frame; ``FrameTooLarge`` (nothing sent, the session intact) when it is
        over ``max_frame_bytes``, ``SessionTransportError`` when the socket is gone."""
        if self._closed:
            raise SessionTransportError(f"{frame_label(frame)} send failed: socket closed")
        data = encode_json(frame)  # UTF-8 JSON: its length is the frame's payload size
        if len(data) > self.max_frame_bytes:
            raise FrameTooLarge(frame_label(frame), len(data), self.max_frame_bytes)
        try:
            await self._ws.send(data, text=True)
        except ConnectionClosed as exc:
            log.warning('websocket send failed frame="%s" error=%s', frame_label(frame), exc)
            raise SessionTransportError(f"{frame_label(frame)} send failed: {exc}") from None

    async def recv(self, idle_timeout_s: float = READ_IDLE_TIMEOUT_S) -> WorkerOutbound:
        """The next studio frame; control frames never surface (websockets answers pings)."""
        try:
            with anyio.fail_after(idle_timeout_s):
                data = await self._ws.recv()
        except TimeoutError:
            raise SessionDisconnected(
                f"no frames from server for {idle_timeout_s:g}s; treating connection as dead"
            ) from None
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            err = error_for_close(rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
            if isinstance(err, AuthFailed):
                log.warning("studio closed the session with 4001")
            raise err from None
        if isinstance(data, bytes):
            log.warning("binary frame from the studio (%d bytes); dropping the session", len(data))
            raise SessionProtocolError("binary frame from the studio")
        try:
            return decode_outbound(data)
        except FrameError as exc:
            log.warning("unparseable frame from the studio: %s", exc)
            raise SessionProtocolError(str(exc)) from None

    async def close(self, reason: str = "session ended", code: int = CloseCode.NORMAL) -> None:
        """Close once (a second call is a no-op); never waits longer than 5 s."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            try:
                await self._ws.close(code, reason)
            except Exception as exc:
                log.debug("close failed: %s", exc)
