"""Keep a studio session alive: wait for credentials, run sessions, back off, stop.

Reconnect policy (protocol.md §2.7): attempt ``n`` waits ``min(1 s x 2^(n-1), 30 s)``; the
counter restarts after a welcomed session, so only consecutive failures accumulate; no cap
by default (``ws_reconnect_attempts = 0``). 401 at upgrade, close 4001 and any ``error``
frame end the loop for good, with the log lines the Rust worker prints.
"""

from __future__ import annotations

import logging
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


async def serve_studio(deps: SessionDeps) -> None:
    """Run sessions until a graceful stop; raises AuthFailed, SessionFatal or
    ReconnectExhausted when the loop must end without one."""
    state = deps.state
    attempt = 0
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
                log.error("auth failed: %s. Re-register the worker.", exc.reason)
                raise
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
