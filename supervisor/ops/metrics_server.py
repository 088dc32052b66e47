"""The optional HTTP endpoint: ``/metrics`` (Prometheus text format), ``/healthz``,
``/readyz`` and the status page (``supervisor.ops.web``).

Off unless ``--metrics HOST:PORT`` or ``metrics_listen`` is set. The app is Starlette on
uvicorn, as in the local studio, run inside the supervisor's root task group without
uvicorn's ``serve``: that would install its own SIGINT/SIGTERM handlers and take the
two-stage shutdown away from the supervisor. The socket is bound here, before uvicorn sees
it, so an address that cannot be bound is a ``MetricsListenError`` with the system's
reason (uvicorn would exit the process). Requests are answered in the event loop from the
live state (no locks, no copies); a bug in a handler costs that request, never the
supervisor. With a config path it also writes the page's action secret at start and
removes it at exit.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Final

import anyio
import anyio.abc
import uvicorn
from prometheus_client import CollectorRegistry, ProcessCollector

from supervisor.errors import MetricsListenError
from supervisor.lanes.lane import Lane
from supervisor.ops.control import socket_path
from supervisor.ops.metrics import WorkerCollector
from supervisor.ops.web.actions import ActionSecret, PageActions, secret_path
from supervisor.ops.web.app import WebParts, build_app
from supervisor.ops.web.host_guard import HostRule
from supervisor.ops.web.log_ring import LogRing
from supervisor.ops.web.secret_mask import SecretMask
from supervisor.pool.engine_pool import EnginePool

log = logging.getLogger("supervisor.metrics")

SHUTDOWN_GRACE_S: Final = 2
KEEP_ALIVE_S: Final = 5
REQUEST_HEAD_MAX_BYTES: Final = 8192  # a longer request line and headers are refused (400)
MAX_CONNECTIONS: Final = 64  # a scrape, probes and a few open pages need far fewer


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


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first address ``host`` resolves to. Raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class MetricsServer:
    def __init__(
        self,
        listen: str,
        pool: EnginePool,
        lanes: list[Lane],
        config_path: Path | None = None,
    ) -> None:
        self.listen = listen
        self.host, self.port = parse_listen(listen)
        self.pool = pool
        self.lanes = lanes
        self.config_path = config_path
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WorkerCollector(pool, lanes))
        ProcessCollector(registry=self.registry)  # the supervisor's own RSS, CPU, fds
        self.logs = LogRing()  # the runtime adds it to the root logger for the whole run
        self.secret = ActionSecret(secret_path(socket_path(config_path))) if config_path else None
        self.address: tuple[str, int] | None = None  # once bound (port 0 picks one)

    @property
    def url(self) -> str:
        assert self.address is not None, "not bound yet"
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _app_parts(self) -> WebParts:
        secret = self.secret
        actions = None
        if secret is not None and self.config_path is not None:
            actions = PageActions(self.lanes, self.config_path, secret)
        return WebParts(
            pool=self.pool,
            lanes=self.lanes,
            registry=self.registry,
            logs=self.logs,
            mask=SecretMask(self.config_path, lambda: secret.value if secret else None),
            config_path=self.config_path,
            actions=actions,
        )

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind, report started, answer requests until cancelled. Raises MetricsListenError
        (before ``started``) when the address cannot be bound."""
        try:
            sock = bind_listener(self.host, self.port)
        except OSError as exc:
            raise MetricsListenError(
                f"cannot serve metrics on {self.listen}: {exc.strerror or exc}"
            ) from None
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(sock.close)
            local = sock.getsockname()
            self.address = (str(local[0]), int(local[1]))
            if self.secret is not None:
                self._write_secret(self.secret, cleanup)
            server = _uvicorn_server(self._app_parts(), HostRule(self.host, self.address[0]))
            await server.startup(sockets=[sock])
            try:
                log.info("metrics listening on %s (/metrics, /healthz, /readyz, /)", self.url)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await server.shutdown()

    def _write_secret(self, secret: ActionSecret, cleanup: contextlib.ExitStack) -> None:
        """A secret that cannot be written leaves the page read-only, not the worker down."""
        try:
            secret.write()
        except OSError as exc:
            log.warning(
                "cannot write the status page's action secret %s (%s); the page is read-only",
                secret.path,
                exc.strerror or exc,
            )
            self.secret = None
            return
        cleanup.callback(secret.remove)


def _uvicorn_server(parts: WebParts, rule: HostRule) -> uvicorn.Server:
    config = uvicorn.Config(
        build_app(parts, rule),
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        log_level="warning",  # uvicorn's start/stop lines are not the operator's business
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=REQUEST_HEAD_MAX_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    return server
