"""Errors the supervisor raises, one tree for the whole package.

    WorkerError                  anything the supervisor reports to its caller
    ├── ConfigError              config.toml unreadable, invalid or unwritable (config.py)
    ├── UrlError                 a base URL that cannot be used (urls.py); also a ValueError
    ├── UsageError               a command-line value out of range (commands.py)
    ├── StudioError              a studio HTTP call failed (studio_http.py); carries ``op``
    │   ├── StudioHttpError      the studio answered non-2xx; ``status`` and ``body``
    │   ├── StudioTransportError no answer: connect, timeout or protocol failure
    │   └── StudioResponseError  a 2xx whose body is not what protocol.md §6 says
    ├── RegistrationRejectedError  the operator rejected this worker (registration.py)
    ├── RegistrationAbortedError   stop was requested before approval (registration.py)
    ├── MetricsListenError       --metrics HOST:PORT unusable or unbindable (metrics.py)
    └── SessionError             the WebSocket session ended abnormally (ws_client, session)
        ├── SessionTransportError    connect / upgrade / send failed: reconnect
        ├── SessionProtocolError     binary or unparseable frame: reconnect
        ├── SessionDisconnected      closed by the studio (not 4001) or silent: reconnect
        ├── AuthFailed               401 upgrade, close 4001, auth_failed frame: stop
        ├── SessionFatal             any other ``error`` frame: stop
        └── ReconnectExhausted       the configured reconnect cap was reached: stop

Messages are built from structured fields and never contain a secret (auth token,
registration secret, local API token) or raw config file content.
"""

from __future__ import annotations

from http import HTTPStatus


class WorkerError(Exception):
    """Base of every error the supervisor raises on purpose."""


class ConfigError(WorkerError):
    """Raised by config.py when config.toml cannot be read, parsed or saved."""


class UrlError(WorkerError, ValueError):
    """Raised by urls.py for a base URL that does not parse or has an unusable scheme."""


class UsageError(WorkerError):
    """Raised by a command for an argument outside its range (e.g. a negative threshold)."""


class StudioError(WorkerError):
    """Raised by studio_http.py when a call to the studio fails; ``op`` names the call."""

    def __init__(self, op: str, message: str) -> None:
        super().__init__(message)
        self.op = op


def status_text(status: int) -> str:
    """``409 Conflict``: the code and its canonical reason, as the Rust worker prints it."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} <unknown status code>"


class StudioHttpError(StudioError):
    """The studio answered with a non-2xx status: ``<op> failed: <status> — <body>``."""

    def __init__(self, op: str, status: int, body: str) -> None:
        super().__init__(op, f"{op} failed: {status_text(status)} — {body}")
        self.status = status
        self.body = body


class StudioTransportError(StudioError):
    """No HTTP answer at all (connection refused, timeout, TLS or protocol failure)."""

    def __init__(self, op: str, cause: str) -> None:
        super().__init__(op, f"{op} failed: transport error: {cause}")
        self.cause = cause


class StudioResponseError(StudioError):
    """A 2xx answer whose JSON body does not decode to the expected shape."""

    def __init__(self, op: str, cause: str) -> None:
        super().__init__(op, f"{op} failed: unparseable response: {cause}")
        self.cause = cause


class RegistrationRejectedError(WorkerError):
    """The studio operator rejected the registration request; ``reason`` is theirs."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"registration rejected by the studio operator: {reason}.  Run "
            "`supervisor register --reset` to clear local state and submit a fresh request."
        )
        self.reason = reason


class RegistrationAbortedError(WorkerError):
    """A stop was requested while registration was still pending."""

    def __init__(self) -> None:
        super().__init__("shutdown before registration completed")


class MetricsListenError(WorkerError):
    """Raised by metrics.py at start-up for a listen address that does not parse as
    ``HOST:PORT`` or cannot be bound (port taken, address not local)."""


class SessionError(WorkerError):
    """The WebSocket session with the studio ended abnormally (ws_client.py, session.py)."""


class SessionTransportError(SessionError):
    """Connect failure, connect timeout, a non-101 upgrade, a failed send: reconnect."""


class SessionProtocolError(SessionError):
    """A binary or unparseable frame from the studio: the session is dropped and retried."""


class SessionDisconnected(SessionError):
    """The studio closed the socket (any code but 4001), or it went silent: reconnect."""


class AuthFailed(SessionError):
    """401 at upgrade, close 4001 or an ``auth_failed`` error: stop; re-register."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionFatal(SessionError):
    """An ``error`` frame with any other code: stop, no reconnect."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReconnectExhausted(SessionError):
    """``ws_reconnect_attempts`` consecutive failures (only when a cap is configured)."""
