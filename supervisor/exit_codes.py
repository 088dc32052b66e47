"""Every exit status of the ``supervisor`` command, in one table: what it means, what the
operator does about it, and whether systemd restarts the service after it.

The CLI exits with one of these and nothing else: each ``WorkerError`` subclass names its
code (``errors.py``), ``start`` returns one for how the session ended (``runtime.py``),
and a bad flag is ``USAGE``. ``service_unit.py`` derives the unit's
``RestartPreventExitStatus=`` from the ``systemd_restarts`` column, and
``tests/test_docs.py`` holds the operator guide's table to this one. Pure data: no I/O,
no imports from the rest of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    AUTH = 3
    STUDIO_FATAL = 4
    RECONNECT_CAP = 5
    ALREADY_RUNNING = 6


@dataclass(frozen=True)
class ExitCodeInfo:
    meaning: str
    action: str
    # Under `Restart=on-failure`: a clean exit (0) is never restarted; every other code is,
    # unless listed in RestartPreventExitStatus=, which is built from the False rows.
    systemd_restarts: bool


EXIT_CODES: Final[Mapping[ExitCode, ExitCodeInfo]] = {
    ExitCode.OK: ExitCodeInfo(
        "done; for `start`: stopped by SIGTERM/SIGINT, or before its registration was approved",
        "nothing",
        False,
    ),
    ExitCode.FAILED: ExitCodeInfo(
        "the command ran and what it asked for failed: `submit`'s job failed or timed out, "
        "the studio or the running supervisor did not answer, a `systemctl` command failed, "
        "`start` ended on an error while serving",
        "read the `error:` line (for `start`, the log lines before it); retry once it is fixed",
        True,
    ),
    ExitCode.USAGE: ExitCodeInfo(
        "usage or configuration error: a bad flag or value, a bad config file or config value, "
        "an unsupported URL scheme, a missing engine library, an unbindable metrics address, "
        "a control socket that cannot be opened, `engine@N` beyond the GPUs present",
        "fix the command line or the config as the `error:` line says; a restart cannot fix it",
        False,
    ),
    ExitCode.AUTH: ExitCodeInfo(
        "authentication: 401 at the WebSocket upgrade, close 4001 or an `auth_failed` frame, "
        "or the registration request was rejected",
        "`supervisor register --reset`, start again, approve the new request in the studio",
        False,
    ),
    ExitCode.STUDIO_FATAL: ExitCodeInfo(
        "the studio sent a fatal `error` frame (`protocol_violation`, `internal_error`, ...)",
        "report the message to the studio operator; update the worker if it names the "
        "protocol (systemd retries: `internal_error` is often transient)",
        True,
    ),
    ExitCode.RECONNECT_CAP: ExitCodeInfo(
        "`ws_reconnect_attempts` consecutive reconnects failed (only when a cap is set)",
        "fix the network or the studio URL, or remove the cap (systemd starts a fresh process "
        "up to `StartLimitBurst` times)",
        True,
    ),
    # Restarted: under the unit this means someone runs a second supervisor on the service's
    # config by hand; once it stops, a restart takes over, and StartLimitBurst bounds the tries.
    ExitCode.ALREADY_RUNNING: ExitCodeInfo(
        "`start`: another supervisor is running with this config (it holds `daemon.lock` "
        "beside the config file); the one running keeps its session",
        "`supervisor status` shows the one running (the `error:` line names its pid); stop it "
        "first, or start this one with another `--config`",
        True,
    ),
}


def restart_prevent_exit_statuses() -> tuple[int, ...]:
    """The codes after which systemd must not restart the service, ascending."""
    return tuple(
        int(code)
        for code, info in sorted(EXIT_CODES.items())
        if code is not ExitCode.OK and not info.systemd_restarts
    )
