"""The optional HTTP endpoint: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``.

Off unless ``--metrics HOST:PORT`` or ``metrics_listen`` is set. It is a deliberately tiny
HTTP/1.1 server on an anyio TCP listener inside the supervisor's root task group: one
``GET`` per connection, answered and closed (what Prometheus and health probes need).
uvicorn is not used here because it installs its own SIGINT/SIGTERM handlers, which would
take the two-stage shutdown away from the supervisor. A scrape reads the live state in the
event loop (``supervisor.metrics``), so there are no locks and no copies. A bad request or
a bug in a handler costs that one connection, never the supervisor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from supervisor.errors import MetricsListenError
from supervisor.lanes.lane import Lane
from supervisor.ops.metrics import WorkerCollector, readiness
from supervisor.pool.engine_pool import EnginePool

log = logging.getLogger("supervisor.metrics")

REQUEST_TIMEOUT_S: Final = 10.0
REQUEST_HEAD_MAX_BYTES: Final = 8192
TEXT_PLAIN: Final = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    content_type: str
    body: bytes

    def encode(self, *, head_only: bool = False) -> bytes:
        head = (
            f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"
            f"Content-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        return head if head_only else head + self.body


def _text(status: HTTPStatus, text: str) -> Response:
    return Response(status, TEXT_PLAIN, (text + "\n").encode())


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``[::1]:9464`` -> (host, port); port 0 picks a free one."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise MetricsListenError(
            f"bad metrics listen address `{text}`: expected HOST:PORT, e.g. 127.0.0.1:9464"
        )
    port = int(port_text)
    if port > 65535:
        raise MetricsListenError(f"bad metrics listen address `{text}`: port out of range")
    return host, port


class MetricsServer:
    def __init__(self, listen: str, pool: EnginePool, lanes: list[Lane]) -> None:
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.pool = pool
        self.lanes = lanes
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(pool, lanes))
        ProcessCollector(registry=self.registry)  # the supervisor's own RSS, CPU, fds
        self.address: tuple[str, int] | None = None  # once bound (port 0 picks one)

    @property
    def url(self) -> str:
        assert self.address is not None, "not bound yet"
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started, answer requests until cancelled. Raises MetricsListenError
        (before ``started``) when the address cannot be bound."""
        try:
            listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        except OSError as exc:
            raise MetricsListenError(
                f"cannot serve metrics on {self.listen}: {exc.strerror or exc}"
            ) from None
        async with listener:
            local = listener.listeners[0].extra(SocketAttribute.local_address)
            assert isinstance(local, tuple)  # a TCP listener: (host, port[, flow, scope])
            self.address = (str(local[0]), int(local[1]))
            log.info("metrics listening on %s (/metrics, /healthz, /readyz)", self.url)
            task_status.started()
            await listener.serve(self._handle)

    def respond(self, method: str, target: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD")
        path = target.split("?", 1)[0]
        match path:
            case "/metrics":
                body = generate_latest(self.registry)
                return Response(HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, body)
            case "/healthz":
                return _text(HTTPStatus.OK, "ok")
            case "/readyz":
                ready, reason = readiness(self.pool, self.lanes)
                return _text(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, reason)
            case _:
                return _text(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz or /readyz")

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT_S):
                    head = await _read_head(stream)
                response, head_only = self._answer(head)
                await stream.send(response.encode(head_only=head_only))
            except (
                TimeoutError,
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                return  # the client went away or never finished its request
            except Exception:
                # A bug here costs this connection, never the supervisor's task group.
                log.exception("metrics connection failed")

    def _answer(self, head: bytes | None) -> tuple[Response, bool]:
        if head is None:
            return _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request too large"), False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(HTTPStatus.BAD_REQUEST, "bad request line"), False
        method, target, _ = parts
        try:
            response = self.respond(method, target)
        except Exception:
            log.exception("metrics request failed method=%s target=%s", method, target)
            response = _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log")
        return response, method == "HEAD"


async def _read_head(stream: anyio.abc.SocketStream) -> bytes | None:
    """The request line and headers, or None past ``REQUEST_HEAD_MAX_BYTES``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > REQUEST_HEAD_MAX_BYTES:
            return None
        buf += await stream.receive()
    return buf.split(b"\r\n\r\n", 1)[0]
