"""``LocalStudio``: opens the data dir, builds the Starlette app and serves it with uvicorn.

``serve`` is a structured-concurrency citizen: start it with ``tg.start`` and it reports
the bound base URL (``http://127.0.0.1:<port>``, what a worker uses as
``api_base_url``) through ``task_status.started``; cancel its scope to stop it. It never
installs signal handlers (the caller owns signals). Stopping is two-stage: the
dispatcher stops offering and stops releasing claims, then uvicorn closes every socket
and waits up to ``SHUTDOWN_GRACE_S`` for handlers to finish; the database closes last.
At startup every job still ``claimed`` goes back to the queue (its session died with
the previous process). ``offer_rule`` picks how many jobs one worker holds at once
(``selection.OfferRule``): up to its ``maxConcurrentJobs`` (the default) or, like the
cloud studio, one offer in flight per worker. One studio per data dir: ``serve`` holds the
data dir's lock (``data_lock``) from before the database opens until after it closed, and
refuses with DataDirBusyError while another process holds it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from localstudio.data_lock import data_dir_lock
from localstudio.dispatcher import Dispatcher
from localstudio.errors import StudioConfigError, StudioStartupError
from localstudio.jobs import DEFAULT_MAX_ATTEMPTS
from localstudio.local_api import LocalApi
from localstudio.schema import prepare_data_dir
from localstudio.selection import OfferRule
from localstudio.store import Store
from localstudio.worker_api import WorkerApi
from protocol.studio import DEFAULT_MAX_FRAME_BYTES

log = logging.getLogger("localstudio")

DEFAULT_HEARTBEAT_TIMEOUT_S: Final = 30.0
SHUTDOWN_GRACE_S: Final = 5


@dataclass(frozen=True, slots=True)
class StudioSettings:
    """Everything a local studio needs besides where to listen."""

    data_dir: Path
    auto_approve: bool = False
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S
    admin_token: str | None = None
    default_max_attempts: int = DEFAULT_MAX_ATTEMPTS
    offer_rule: OfferRule = OfferRule.PER_CAPACITY
    parent_pid: int | None = None  # the supervisor that started it, written into the lock


class _DenialNoiseFilter(logging.Filter):
    """Drops one false alarm of uvicorn's websockets-sansio protocol.

    After an application-sent denial response (our HTTP 401 for a bad worker token) it
    logs ``ASGI callable returned without completing handshake.`` at error level,
    although the 401 went out as intended. Our WebSocket endpoint always accepts or
    denies (an exception logs a different message), so only this record is dropped.
    """

    MESSAGE: Final = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.MESSAGE


@contextlib.contextmanager
def _quiet_denial_noise() -> Iterator[None]:
    noise = _DenialNoiseFilter()
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(noise)
    try:
        yield
    finally:
        uvicorn_log.removeFilter(noise)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class LocalStudio:
    """A local studio over one data dir; ``serve`` runs it until cancelled."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        auto_approve: bool = False,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        admin_token: str | None = None,
        default_max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        offer_rule: OfferRule = OfferRule.PER_CAPACITY,
        parent_pid: int | None = None,
    ) -> None:
        if heartbeat_timeout_s <= 0:
            raise StudioConfigError("heartbeat_timeout_s must be positive")
        if default_max_attempts < 1:
            raise StudioConfigError("default_max_attempts must be at least 1")
        self.settings = StudioSettings(
            data_dir=Path(data_dir),
            auto_approve=auto_approve,
            heartbeat_timeout_s=heartbeat_timeout_s,
            admin_token=admin_token or None,
            default_max_attempts=default_max_attempts,
            offer_rule=offer_rule,
            parent_pid=parent_pid,
        )
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` once serving (a worker's ``api_base_url``)."""
        if self._base_url is None:
            raise RuntimeError("the local studio is not serving")
        return self._base_url

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; ``task_status.started(base_url)`` once listening."""
        settings = self.settings
        if not is_loopback(host) and settings.admin_token is None:
            raise StudioConfigError(
                f"refusing to serve the local API on non-loopback {host} without an admin token"
            )
        prepare_data_dir(settings.data_dir)
        with data_dir_lock(settings.data_dir, settings.parent_pid):
            await self._serve_locked(host, port, task_status)

    async def _serve_locked(self, host: str, port: int, task_status: TaskStatus[str]) -> None:
        settings = self.settings
        store = Store.open(settings.data_dir)
        try:
            released = store.jobs.release_orphaned_claims()
            if released:
                log.info("requeued %d job(s) claimed before the restart", released)
            dispatcher = Dispatcher(store, settings.offer_rule)
            server = _uvicorn_server(_build_app(settings, store, dispatcher), host, port)
            with _quiet_denial_noise():
                await _start(server, host, port)
                try:
                    bound_port: int = server.servers[0].sockets[0].getsockname()[1]
                    self._base_url = base_url_for(host, bound_port)
                    log.info(
                        "local studio on %s (data in %s, offers %s)",
                        self._base_url,
                        settings.data_dir,
                        settings.offer_rule.value,
                    )
                    task_status.started(self._base_url)
                    await anyio.sleep_forever()
                finally:
                    self._base_url = None
                    with anyio.CancelScope(shield=True):
                        dispatcher.shut_down()
                        await server.shutdown()
        finally:
            store.close()


async def serve(
    host: str,
    port: int,
    data_dir: Path | str,
    *,
    auto_approve: bool = False,
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
    admin_token: str | None = None,
    offer_rule: OfferRule = OfferRule.PER_CAPACITY,
    task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Shorthand for ``LocalStudio(data_dir, ...).serve(host, port)``."""
    studio = LocalStudio(
        data_dir,
        auto_approve=auto_approve,
        heartbeat_timeout_s=heartbeat_timeout_s,
        admin_token=admin_token,
        offer_rule=offer_rule,
    )
    await studio.serve(host, port, task_status=task_status)


def _build_app(settings: StudioSettings, store: Store, dispatcher: Dispatcher) -> Starlette:
    worker_api = WorkerApi(
        store,
        dispatcher,
        settings.data_dir,
        auto_approve=settings.auto_approve,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    local_api = LocalApi(
        store,
        dispatcher,
        settings.data_dir,
        admin_token=settings.admin_token,
        default_max_attempts=settings.default_max_attempts,
    )
    return Starlette(routes=[*worker_api.routes(), *local_api.routes()])


class ShutdownSafeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-io WebSocket protocol, minus a shutdown race that aborts the server's
    whole shutdown.

    When a client's close frame has arrived, websockets answers it on its own and the
    connection is CLOSING until the transport finishes closing, but uvicorn (0.54) only
    tracks closes the app sent: a shutdown in that window sends its own 1012 close,
    websockets raises ``InvalidState``, and the exception ends ``Server.shutdown`` before
    the other connections are closed (seen as the local studio exiting 1 when a worker
    disconnected during its shutdown). Such a connection is dropped instead: the client
    already said goodbye, and a client that stopped reading would hold a graceful close
    for the whole grace period.
    """

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and self.conn.state is not State.OPEN:
            self.stop_keepalive()
            self.transport.abort()
            return
        super().shutdown()


def _uvicorn_server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=ShutdownSafeWebSocketProtocol,
        # A worker frame over the limit closes its connection with 1009, as a studio would.
        ws_max_size=DEFAULT_MAX_FRAME_BYTES,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    return server


async def _start(server: uvicorn.Server, host: str, port: int) -> None:
    """Bind and start accepting (uvicorn's startup without its signal capture)."""
    try:
        await server.startup()
    except SystemExit:  # uvicorn exits the process when it cannot bind
        raise StudioStartupError(host, port) from None
