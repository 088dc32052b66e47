"""Errors the supervisor raises, one tree for the whole package. Every error that can reach
the command line is here, with the exit status the CLI ends with (``exit_codes.py``).

    WorkerError                    exit  anything the supervisor reports to its caller
    ├── ConfigError                2     config.toml unreadable, invalid, unwritable (config.py)
    ├── UrlError                   2     a base URL that cannot be used (urls.py); a ValueError
    ├── UsageError                 2     a command-line value out of range (cli/)
    ├── SlotSpecError              2     a bad ``--engines`` / ``engines`` entry (slot_spec.py)
    ├── StartupError               2     a named engine's library is missing (runtime.py)
    ├── MetricsListenError         2     --metrics HOST:PORT unusable or unbindable (metrics.py)
    ├── ControlListenError         2     the control socket cannot be opened (control.py)
    ├── LocalStudioError           2     ``start --local``: the studio did not come up
    ├── LocalConfigConflict        2     ``start --local``: the config is another studio's
    ├── AnotherSupervisorRunning   6     ``start``: a supervisor already runs with the config
    ├── GpuError                   1     the GPUs (supervisor/gpu/)
    │   ├── GpuReadError           1     NVML error, unreadable simulation file
    │   └── DeviceIndexError       2     ``engine@N`` names a GPU that is not present
    ├── ControlError               1     no usable answer on the control socket (control.py)
    │   └── SupervisorNotRunning   1     nobody listens there: ``status``, ``pause``, ``resume``
    ├── ServiceError               1     install-/uninstall-service: a command or write failed
    ├── UpdateError                1     an update check or install failed (updates/)
    ├── SubmitError                1     ``submit``: the result could not be saved
    │   ├── JobFailedError         1     the job ended ``failed``
    │   └── JobWaitTimeout         1     ``--timeout`` passed before the job ended
    ├── StudioError                1     a studio HTTP call failed; carries ``op``
    │   ├── StudioHttpError        1     the studio answered non-2xx; ``status`` and ``body``
    │   ├── StudioTransportError   1     no answer: connect, timeout or protocol failure
    │   └── StudioResponseError    1     a 2xx whose body is not what protocol.md §6 says
    ├── RegistrationRejectedError  3     the operator rejected this worker (registration.py)
    ├── RegistrationAbortedError   0     stop was requested before approval (registration.py)
    └── SessionError               1     the WebSocket session ended abnormally (ws_client, session)
        ├── SessionTransportError  1     connect / upgrade / send failed: reconnect
        ├── SessionProtocolError   1     binary or unparseable frame: reconnect
        ├── FrameTooLarge          1     a frame over ``max_frame_bytes``, not sent: its job fails
        ├── SessionDisconnected    1     closed by the studio (not 4001) or silent: reconnect
        ├── AuthFailed             3     401 upgrade, close 4001, auth_failed frame: stop
        ├── SessionFatal           4     any other ``error`` frame: stop
        └── ReconnectExhausted     5     the configured reconnect cap was reached: stop

The exit column is each class's ``exit_code``; tests/supervisor/cli/test_exit_codes.py holds
this drawing to the classes. The CLI prints ``error: <message>`` and exits with it; ``start``
returns it for the error that ended the session. Session errors that reconnect never get
that far: theirs is the code ``start`` would use if one did.

Messages are built from structured fields, say what to do where the operator has something
to do, and never contain a secret (auth token, registration secret, local API token) or
raw config file content.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path
from typing import ClassVar

from supervisor.exit_codes import ExitCode


class WorkerError(Exception):
    """Base of every error the supervisor raises on purpose; ``exit_code`` is the CLI's."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ConfigError(WorkerError):
    """Raised by config.py when config.toml cannot be read, parsed or saved. The operator
    fixes the file (or its permissions) as the message says."""

    exit_code = ExitCode.USAGE


class UrlError(WorkerError, ValueError):
    """Raised by urls.py for a base URL that does not parse or has an unusable scheme (and
    by ``start`` for such an ``api_base_url`` before any host is spawned). The operator sets
    an http(s) URL with ``supervisor register --api-base-url``."""

    exit_code = ExitCode.USAGE


class UsageError(WorkerError):
    """Raised by a command for an argument outside its range (e.g. a negative threshold) or
    an environment override that does not parse. The operator fixes the command line."""

    exit_code = ExitCode.USAGE


class SlotSpecError(WorkerError, ValueError):
    """Raised by slot_spec.py for an engine list that does not parse: an unknown engine, a
    GPU index that is not a whole number, no engine at all. The message names where the
    list came from (``--engines`` or the config's ``engines``), which the operator fixes."""

    exit_code = ExitCode.USAGE


class StartupError(WorkerError):
    """Raised by runtime.py at start-up, before any host is spawned, when a named engine's
    library is not installed; the message has the ``pip install`` command to run."""

    exit_code = ExitCode.USAGE


class MetricsListenError(WorkerError):
    """Raised by metrics.py at start-up for a listen address that does not parse as
    ``HOST:PORT`` or cannot be bound (port taken, address not local). The operator picks
    another address."""

    exit_code = ExitCode.USAGE


class ControlListenError(WorkerError):
    """Raised by control.py at start-up when the control socket cannot be opened (its
    directory is read-only, or the private fallback directory is not ours)."""

    exit_code = ExitCode.USAGE


class LocalStudioError(WorkerError):
    """Raised by owned_studio/ when the ``--local`` studio process did not come up (its port
    held by another program, its data dir held by a studio the supervisor did not start, a
    crash at start); the message says which, with the tail of its log. The operator picks
    another ``--local-port``, stops what holds the data dir, or reads ``studio.log``. (Also
    ``studio serve``'s own refusals, from studio_commands.py.)"""

    exit_code = ExitCode.USAGE


class LocalConfigConflict(WorkerError):
    """Raised by ``start --local`` (owned_studio/ownership.py) before anything starts, when
    the config holds a registration with a studio that is not on this machine's loopback:
    the local studio would replace it. The operator runs ``start --local`` without
    ``--config`` (it keeps a config of its own) or gives it another config."""

    exit_code = ExitCode.USAGE

    def __init__(self, config_path: Path, api_base_url: str, local_config: Path) -> None:
        super().__init__(
            f"{config_path} is registered with the studio at {api_base_url}; `start --local` "
            "would replace that registration. Run `supervisor start --local` without --config "
            f"(it keeps its own config, {local_config}), or give it a config of its own"
        )
        self.config_path = config_path
        self.api_base_url = api_base_url


class AnotherSupervisorRunning(WorkerError):
    """Raised by ``start`` (instance_lock.py) before anything is created, when another
    supervisor holds ``daemon.lock`` beside the config: two on one config would share one
    worker id and knock each other's session off. The one running is left alone; the
    operator stops it first or starts this one with another ``--config``."""

    exit_code = ExitCode.ALREADY_RUNNING

    def __init__(self, config_path: Path, pid: int | None) -> None:
        if pid is not None:
            running = f"another supervisor (pid {pid}) is running with {config_path}"
        else:  # it has not written its pid yet
            running = f"another supervisor is running with {config_path}"
        super().__init__(
            f"{running}; `supervisor --config {config_path} status` shows it: stop it before "
            "starting another"
        )
        self.config_path = config_path
        self.pid = pid


class GpuError(WorkerError):
    """Something about the GPUs (raised by supervisor/gpu/)."""


class GpuReadError(GpuError):
    """The GPU source failed to answer: an NVML error, an unreadable or invalid simulation
    file. The operator checks the driver (``nvidia-smi``) or ``STUDIO_WORKER_SIMULATED_GPUS``;
    under systemd the service is restarted (a driver hiccup may pass)."""


class DeviceIndexError(GpuError):
    """``engine@N`` names a GPU this machine does not have (or an inherited
    ``CUDA_VISIBLE_DEVICES`` names one that is not there); raised at start-up before any
    host is spawned, the message naming N and the GPUs present. The operator fixes
    ``--engines``, the config's ``engines`` or the environment."""

    exit_code = ExitCode.USAGE


class ControlError(WorkerError):
    """Raised by control.py's client (``status``, ``pause``, ``resume``) when the running
    supervisor's control socket gives no usable answer (timeout, permission, garbage)."""


class SupervisorNotRunning(ControlError):
    """Nobody listens on the control socket of this config: the operator starts the
    supervisor, or passes the ``--config`` of the one that runs."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__(
            f"no supervisor is running for this config (nothing listens on {socket_path}); "
            "start one with `supervisor start` (or `systemctl start studio-worker`)"
        )
        self.socket_path = socket_path


class ServiceError(WorkerError):
    """Raised by service_commands.py when a ``systemctl`` / ``useradd`` command fails or the
    unit file cannot be written or removed; the commands left are printed above it for the
    operator to run by hand."""


class UpdateError(WorkerError):
    """Asking the package index, installing a release or rolling one back failed; the
    message is pip's own last ``ERROR:`` line where it gave one. The running version stays."""


class SubmitError(WorkerError):
    """Raised by ``supervisor submit`` (studio_commands.py) when its result cannot be saved
    under ``--out``; the job itself is done and stays on the studio."""


class JobFailedError(SubmitError):
    """The submitted job ended ``failed``; ``error`` is the engine's or the studio's text."""

    def __init__(self, job_id: str, attempts: int, error: str | None) -> None:
        super().__init__(f"job {job_id} failed after {attempts} attempt(s): {error}")
        self.job_id = job_id
        self.attempts = attempts
        self.error = error


class JobWaitTimeout(SubmitError):
    """``submit --timeout`` passed before the job ended; the job stays queued or running on
    the studio (``supervisor studio jobs`` shows it)."""

    def __init__(self, job_id: str, status: str, timeout_s: float) -> None:
        super().__init__(
            f"job {job_id} still {status} after {timeout_s:g} s (--timeout); it stays on the "
            "studio: `supervisor studio jobs` shows it, a worker may still take it"
        )
        self.job_id = job_id
        self.status = status
        self.timeout_s = timeout_s


class StudioError(WorkerError):
    """Raised by studio/http.py when a call to the studio fails, and by the local studio
    commands (studio_commands.py); ``op`` names the call."""

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

    exit_code = ExitCode.AUTH

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"registration rejected by the studio operator: {reason}.  Run "
            "`supervisor register --reset` to clear local state and submit a fresh request."
        )
        self.reason = reason


class RegistrationAbortedError(WorkerError):
    """A stop was requested while registration was still pending: a clean stop."""

    exit_code = ExitCode.OK

    def __init__(self) -> None:
        super().__init__("shutdown before registration completed")


class SessionError(WorkerError):
    """The WebSocket session with the studio ended abnormally (ws_client.py, session.py)."""


class SessionTransportError(SessionError):
    """Connect failure, connect timeout, a non-101 upgrade, a failed send: reconnect."""


class SessionProtocolError(SessionError):
    """A binary or unparseable frame from the studio: the session is dropped and retried."""


class FrameTooLarge(SessionError):
    """Raised by ws_client.py's ``send`` for a frame larger than the studio's frame limit
    (config ``max_frame_bytes``), before anything is sent: the session is intact. The job
    runner fails that job ``retryable: false`` (a JSON result that big, with its echoed
    prompt, fails on any worker); anywhere else the session reconnects. The operator raises
    ``max_frame_bytes`` only if the studio is known to take larger frames."""

    def __init__(self, label: str, size: int, limit: int) -> None:
        super().__init__(
            f"{label} frame of {size} bytes is over the studio's frame limit of {limit} bytes "
            "(max_frame_bytes)"
        )
        self.label = label
        self.size = size
        self.limit = limit


class SessionDisconnected(SessionError):
    """The studio closed the socket (any code but 4001), or it went silent: reconnect."""


class AuthFailed(SessionError):
    """401 at upgrade, close 4001 or an ``auth_failed`` error: stop; re-register."""

    exit_code = ExitCode.AUTH

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionFatal(SessionError):
    """An ``error`` frame with any other code: stop, no reconnect."""

    exit_code = ExitCode.STUDIO_FATAL

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReconnectExhausted(SessionError):
    """``ws_reconnect_attempts`` consecutive failures (only when a cap is configured)."""

    exit_code = ExitCode.RECONNECT_CAP
