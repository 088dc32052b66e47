"""Keep a studio session alive: wait for credentials, run sessions, back off, stop.

Reconnect policy (protocol.md §2.7): attempt ``n`` waits ``min(1 s x 2^(n-1), 30 s)``; the
counter restarts after a welcomed session, so only consecutive failures accumulate; no cap
by default (``ws_reconnect_attempts = 0``). 401 at upgrade, close 4001 and any ``error``
frame end the loop for good, with the log lines the Rust worker prints, with one exception:
given ``reregister`` (only for a studio the supervisor owns, ``start --local``), an auth
failure registers the worker again and reconnects, once per welcomed session, so a studio
that refuses every registration still ends the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from supervisor.errors import (
    AuthFailed,
    ReconnectExhausted,
    SessionDisconnected,
    SessionError,
    SessionFatal,
)
from supervisor.pool.policies import backoff_s, reconnect_exhausted
from supervisor.session_state import SessionEvent, SessionPhase
from supervisor.studio.session import SessionDeps, StudioSession

log = logging.getLogger("supervisor.session")

CREDENTIALS_POLL_S: Final = 1.0

Reregister = Callable[[], Awaitable[object]]


def has_credentials(worker_id: str | None, auth_token: str | None) -> bool:
    return bool(worker_id) and bool(auth_token)


async def wait_for_credentials(deps: SessionDeps) -> bool:
    """True once worker_id and auth_token are both set; False if stopped first."""
    logged = False
    while not deps.stop.is_set():
        cfg = deps.config.current()
        if has_credentials(cfg.worker_id, cfg.auth_token):
            return True
        if not logged:
            log.info("waiting for operator approval before opening the session")
            logged = True
        with anyio.move_on_after(CREDENTIALS_POLL_S):
            await deps.stop.wait()
    return False


def may_register_again(welcomed: int, welcomed_when_last_registered: int | None) -> bool:
    """Register again after an auth failure only if the last time led to a welcome (or
    there was no last time): a studio that refuses its own fresh token must not loop."""
    return welcomed_when_last_registered is None or welcomed > welcomed_when_last_registered


async def serve_studio(deps: SessionDeps, *, reregister: Reregister | None = None) -> None:
    """Run sessions until a graceful stop; raises AuthFailed, SessionFatal or
    ReconnectExhausted when the loop must end without one (AuthFailed not while
    ``reregister`` may register the worker again: see the module docstring)."""
    state = deps.state
    attempt = 0
    registered_at: int | None = None  # state.sessions_welcomed when last registered again
    try:
        if not await wait_for_credentials(deps):
            return
        while True:
            state.session_event(SessionEvent.CONNECT)
            session = StudioSession(deps)
            error: SessionError | None = None
            try:
                await session.run()
            except AuthFailed as exc:
                registered_at = await _register_again_or_raise(exc, deps, reregister, registered_at)
                attempt = 0
                continue
            except SessionFatal as exc:
                log.error("fatal: %s", exc.reason)
                raise
            except SessionError as exc:
                error = exc
            if deps.stop.is_set():
                return
            state.session_event(SessionEvent.LOST)
            if session.welcomed:
                attempt = 0
            attempt += 1
            state.reconnects += 1
            state.reconnect_attempt = attempt
            cap = deps.config.current().ws_reconnect_attempts or 0
            if reconnect_exhausted(cap, attempt):
                log.error("giving up after %d reconnect attempts", attempt - 1)
                raise ReconnectExhausted("ws reconnect cap reached")
            delay = backoff_s(attempt, deps.timings.reconnect_base_s, deps.timings.reconnect_max_s)
            if error is None or isinstance(error, SessionDisconnected):
                if error is not None:
                    log.warning("session closed: %s", error)
                log.warning("disconnected; reconnect attempt %d in %dms", attempt, delay * 1000)
            else:
                log.warning(
                    "session error: %s; reconnect attempt %d in %dms", error, attempt, delay * 1000
                )
            with anyio.move_on_after(delay):
                await deps.stop.wait()
            if deps.stop.is_set():
                return
    finally:
        if state.phase is not SessionPhase.STOPPED:
            state.session_event(SessionEvent.STOP)


async def _register_again_or_raise(
    exc: AuthFailed, deps: SessionDeps, reregister: Reregister | None, registered_at: int | None
) -> int:
    """Re-raise ``exc`` unless the owned studio may be registered with again; then do that
    and return the welcome count it happened at (see ``may_register_again``)."""
    state = deps.state
    if reregister is None or not may_register_again(state.sessions_welcomed, registered_at):
        log.error("auth failed: %s. Re-register the worker.", exc.reason)
        raise exc
    log.warning(
        "auth failed: %s; the local studio no longer knows this worker (its data was reset?): "
        "registering with it again",
        exc.reason,
    )
    state.session_event(SessionEvent.LOST)
    await reregister()
    return state.sessions_welcomed
