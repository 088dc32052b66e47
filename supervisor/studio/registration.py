"""Auto-registration with operator approval: the protocol.md §6.2 state machine.

``Registrar.tick`` does at most one HTTP round trip, applies one event to the phase table
(``registration_state``) and reports the new state with its data; every outcome that
changes what must survive a restart is saved through ``save_lane_config`` (a lane's
identity in its own table, the first lane's at the top level).
``ensure_registered`` drives ticks until the operator approves (returns the config with
credentials), rejects (RegistrationRejectedError) or a stop is requested
(RegistrationAbortedError). The registration secret and the issued token are never logged.
``register_again`` is for the one studio whose data this supervisor owns (``start
--local``): when it answers the saved token with 401, its data was reset, so the worker
drops the credentials it no longer knows and registers anew. Never used with a studio the
supervisor does not own: there a 401 is the operator's to act on.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, assert_never

import anyio

from protocol.studio import (
    Capabilities,
    RegisterRequest,
    RegistrationApproved,
    RegistrationPending,
    RegistrationRejected,
    RegistrationStatus,
)
from supervisor import USER_AGENT
from supervisor.config import WorkerConfig
from supervisor.errors import (
    ConfigError,
    RegistrationAbortedError,
    RegistrationRejectedError,
    StudioError,
)
from supervisor.lane_identity import save_lane_config
from supervisor.live_config import LiveConfig
from supervisor.studio.http import StudioHttp
from supervisor.studio.registration_state import (
    RegistrationEvent,
    RegistrationPhase,
    registration_machine,
)
from supervisor.studio.urls import normalize_base_url

log = logging.getLogger("supervisor.registration")

POLL_INTERVAL_S: Final = 30.0

CapabilitiesFn = Callable[[WorkerConfig], Capabilities]
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Pristine:
    """No request outstanding (first launch, after a failed POST or a 404)."""


@dataclass(frozen=True)
class Pending:
    """A request the operator has not decided yet; ``since`` is when this process first saw it."""

    request_id: str
    since: datetime


@dataclass(frozen=True)
class Approved:
    """Credentials are in the config; the WebSocket session may start."""

    worker_id: str


@dataclass(frozen=True)
class Rejected:
    """The operator rejected the request; only ``register --reset`` starts over."""

    reason: str


RegistrationState = Pristine | Pending | Approved | Rejected
"""What ``tick`` reports: the phase the table moved to, with the data that phase carries."""


def new_install_id() -> str:
    """16 OS-random bytes as lowercase hex in 8-4-4-4-12 groups (no UUID version bits)."""
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"


def new_registration_secret() -> str:
    """32 OS-random bytes as 64 lowercase hex characters."""
    return secrets.token_hex(32)


def secret_hash(secret: str) -> str:
    """sha256 of the secret's UTF-8 bytes as 64 lowercase hex (what the studio stores)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registrar:
    """Owns the registration fields of the config and persists every change it makes.

    ``config`` is always the latest value (saved or, after a failed save, in memory only).
    """

    def __init__(
        self,
        cfg_path: Path,
        cfg: WorkerConfig,
        http: StudioHttp,
        capabilities_fn: CapabilitiesFn,
        *,
        clock: Clock = _utc_now,
        table: str | None = None,
    ) -> None:
        self.cfg_path = cfg_path
        self.table = table  # a lane's ``[lane.NAME]``; None: the top-level identity
        self.config = cfg
        # What the file held when last read or written: a save rewrites only the keys that
        # registration changed since, so an operator's edit meanwhile is not reverted.
        self._saved = cfg
        self._http = http
        self._capabilities_fn = capabilities_fn
        self._clock = clock
        self._pending: Pending | None = None
        if cfg.has_credentials:
            initial = RegistrationPhase.APPROVED
        elif cfg.registration_request_id and cfg.registration_secret:
            initial = RegistrationPhase.PENDING
        else:
            initial = RegistrationPhase.PRISTINE
        self.phase = registration_machine(initial)

    async def tick(self) -> RegistrationState:
        """Advance by at most one HTTP round trip; raises ConfigError only if new install
        state cannot be saved (an approval could not be kept either)."""
        if self.config.has_credentials:
            assert self.config.worker_id is not None
            return Approved(self.config.worker_id)
        if self._ensure_install_state():
            self.phase = registration_machine(RegistrationPhase.PRISTINE)
        request_id = self.config.registration_request_id
        secret = self.config.registration_secret
        assert secret is not None
        if request_id is None:
            return await self._create_request(secret)
        return await self._poll(request_id, secret)

    def _ensure_install_state(self) -> bool:
        """Create the install id and secret if missing; True when a request id was dropped
        because its secret was gone (the registration starts over)."""
        cfg = self.config
        changes: dict[str, str | None] = {}
        if not cfg.install_id:
            changes["install_id"] = new_install_id()
        if not cfg.registration_secret:
            # A request id without its secret can never be polled: start a fresh request.
            changes["registration_request_id"] = None
            changes["registration_secret"] = new_registration_secret()
        if changes:
            self.config = cfg.replace(**changes)
            self._save()
        return "registration_secret" in changes and cfg.registration_request_id is not None

    async def _create_request(self, secret: str) -> RegistrationState:
        assert self.config.install_id is not None
        body = RegisterRequest(
            install_id=self.config.install_id,
            registration_secret_hash=secret_hash(secret),
            capabilities=self._capabilities_fn(self.config),
            user_agent=USER_AGENT,
        )
        try:
            accepted = await self._http.register_request(self.config.api_base_url, body)
        except StudioError as exc:
            log.warning('registration request failed op="register-request" error="%s"', exc)
            self.phase.apply(RegistrationEvent.REQUEST_FAILED)
            return Pristine()
        self.phase.apply(RegistrationEvent.REQUEST_ACCEPTED)
        self.config = self.config.replace(registration_request_id=accepted.request_id)
        self._try_save(logging.WARNING, "register-request", "failed to save the request id")
        return self._pending_for(accepted.request_id)

    async def _poll(self, request_id: str, secret: str) -> RegistrationState:
        try:
            status = await self._http.poll_registration(
                self.config.api_base_url, request_id, secret
            )
        except StudioError as exc:
            log.warning(
                'registration poll failed op="poll" request_id=%s error="%s"', request_id, exc
            )
            self.phase.apply(RegistrationEvent.STILL_PENDING)
            return self._pending_for(request_id)
        return self._apply(request_id, status)

    def _apply(self, request_id: str, status: RegistrationStatus | None) -> RegistrationState:
        """The state a poll answer leads to (None = 404: the studio forgot the request)."""
        cleared = {"registration_request_id": None, "registration_secret": None}
        match status:
            case None:
                self.phase.apply(RegistrationEvent.FORGOTTEN)
                log.info(
                    "registration request %s is stale (404); submitting a fresh one", request_id
                )
                self.config = self.config.replace(**cleared)
                self._pending = None
                self._try_save(logging.WARNING, "poll", "failed to save config after a 404")
                return Pristine()
            case RegistrationPending():
                self.phase.apply(RegistrationEvent.STILL_PENDING)
                return self._pending_for(request_id)
            case RegistrationApproved(worker_id=worker_id, auth_token=auth_token):
                self.phase.apply(RegistrationEvent.APPROVED)
                self.config = self.config.replace(
                    worker_id=worker_id, auth_token=auth_token, **cleared
                )
                self._pending = None
                log.info("registration approved worker_id=%s", worker_id)
                self._try_save(logging.ERROR, "poll", "failed to persist approved credentials")
                return Approved(worker_id)
            case RegistrationRejected(reason=reason):
                self.phase.apply(RegistrationEvent.REJECTED)
                self.config = self.config.replace(**cleared)
                self._pending = None
                log.warning('registration rejected by the studio operator reason="%s"', reason)
                self._try_save(logging.WARNING, "poll", "failed to save config after rejection")
                return Rejected(reason)
            case _:
                assert_never(status)

    def _pending_for(self, request_id: str) -> Pending:
        """Pending, keeping the first time this process saw ``request_id``."""
        if self._pending is None or self._pending.request_id != request_id:
            self._pending = Pending(request_id, self._clock())
        return self._pending

    def _save(self) -> None:
        save_lane_config(self.cfg_path, self.table, self.config, self._saved)
        self._saved = self.config

    def _try_save(self, level: int, op: str, message: str) -> None:
        """Save; a failure is logged at ``level`` and the new state stays in memory."""
        try:
            self._save()
        except ConfigError as exc:
            log.log(level, 'registration: %s op="%s" error="%s"', message, op, exc)


async def _tick_unless_stopped(registrar: Registrar, stop: anyio.Event) -> RegistrationState | None:
    """One tick, abandoned (HTTP cancelled) as soon as ``stop`` is set; None if stopped.

    An error from the tick is re-raised as itself, not wrapped in an ExceptionGroup.
    """
    outcome: RegistrationState | Exception | None = None
    async with anyio.create_task_group() as tg:

        async def cancel_on_stop() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(cancel_on_stop)
        try:
            outcome = await registrar.tick()
        except Exception as exc:  # cancellation is a BaseException and passes through
            outcome = exc
        tg.cancel_scope.cancel()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def ensure_registered(
    cfg_path: Path,
    cfg: WorkerConfig,
    capabilities_fn: CapabilitiesFn,
    stop: anyio.Event,
    poll_interval_s: float = POLL_INTERVAL_S,
    *,
    http: StudioHttp | None = None,
    table: str | None = None,
) -> WorkerConfig:
    """Tick now, then every ``poll_interval_s``, until approved; returns the config with
    ``worker_id`` and ``auth_token`` set (and saved, unless the save failed: logged at ERROR).

    Raises RegistrationRejectedError, RegistrationAbortedError (``stop`` set), UrlError for an
    unusable ``api_base_url`` and ConfigError when install state cannot be saved. ``cfg``
    is a lane's view and ``table`` where its identity is saved (None: the top level).
    """
    if cfg.has_credentials:
        return cfg
    normalize_base_url(cfg.api_base_url)  # fail fast instead of retrying a bad URL forever
    if http is None:
        async with StudioHttp() as own_http:
            registrar = Registrar(cfg_path, cfg, own_http, capabilities_fn, table=table)
            return await _drive(registrar, stop, poll_interval_s)
    registrar = Registrar(cfg_path, cfg, http, capabilities_fn, table=table)
    return await _drive(registrar, stop, poll_interval_s)


async def _drive(registrar: Registrar, stop: anyio.Event, poll_interval_s: float) -> WorkerConfig:
    announced: str | None = None
    while not stop.is_set():
        state = await _tick_unless_stopped(registrar, stop)
        match state:
            case None:
                break
            case Approved():
                return registrar.config
            case Rejected(reason=reason):
                raise RegistrationRejectedError(reason)
            case Pending(request_id=request_id) if request_id != announced:
                log.info("waiting for operator approval (request %s)", request_id)
                announced = request_id
            case Pending() | Pristine():
                pass
            case _:
                assert_never(state)
        with anyio.move_on_after(poll_interval_s):
            await stop.wait()
    raise RegistrationAbortedError()


async def register_again(
    live: LiveConfig,
    capabilities_fn: CapabilitiesFn,
    stop: anyio.Event,
    poll_interval_s: float = POLL_INTERVAL_S,
    *,
    http: StudioHttp,
) -> WorkerConfig:
    """Forget the worker id and token the owned studio refused, register with it again and
    serve the new ones from ``live``. The install id is kept (it is this machine's). Raises
    what ``ensure_registered`` raises."""
    forgotten = live.update(
        worker_id=None, auth_token=None, registration_request_id=None, registration_secret=None
    )
    cfg = await ensure_registered(
        live.path, forgotten, capabilities_fn, stop, poll_interval_s, http=http, table=live.table
    )
    # Saved by the registrar already; this makes `live` serve them without a re-read.
    return live.update(worker_id=cfg.worker_id, auth_token=cfg.auth_token)
