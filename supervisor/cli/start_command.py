"""``supervisor start``: resolve options (``--local`` included) and run the supervisor.

Registration polling: while a registration request waits for the operator, the supervisor
asks the studio every 30 s (``registration.POLL_INTERVAL_S``). With ``--local`` the studio is
on loopback and approves at once, so it asks every second instead. The environment variable
``STUDIO_WORKER_REGISTRATION_POLL_S`` (seconds, > 0) overrides both: a testing/ops knob
(the contract tests set it so an approval is picked up within a fraction of a second), not
a setting an operator normally needs.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Final, cast, get_args

from engines.cpu_threads import THREADS_ENV, parse_threads_override
from supervisor.cli.local_launch import command_config_path
from supervisor.cli.logging_setup import configure_logging
from supervisor.config import LANE_MODES, LaneMode, LogFormat, load_config
from supervisor.errors import UsageError
from supervisor.exit_codes import ExitCode
from supervisor.ops.control import socket_path
from supervisor.ops.web.actions import secret_path
from supervisor.owned_studio.launch import LocalStudioSpec
from supervisor.runtime import StartOptions, check_start, run_supervisor
from supervisor.studio.registration import POLL_INTERVAL_S
from supervisor.telemetry.sentry import capture_crash, start_telemetry, stop_telemetry
from supervisor.updates.restart import (
    failed_probation,
    pending_reexec,
    probation_gate,
    reexec,
    rollback_if_start_fails,
)

REGISTRATION_POLL_ENV: Final = "STUDIO_WORKER_REGISTRATION_POLL_S"
LOCAL_REGISTRATION_POLL_S: Final = 1.0
LOG_FORMATS: Final = get_args(LogFormat)
MAX_PORT: Final = 65535


def registration_poll_s(*, local: bool) -> float:
    """Seconds between registration polls: the env override, else 1 s local, 30 s otherwise."""
    raw = os.environ.get(REGISTRATION_POLL_ENV, "").strip()
    if not raw:
        return LOCAL_REGISTRATION_POLL_S if local else POLL_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{REGISTRATION_POLL_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def check_threads_override() -> None:
    """Refuse a bad ``STUDIO_WORKER_THREADS`` with a usage error before anything starts
    (the pool reads it to give each engine host its ``--threads``)."""
    try:
        parse_threads_override(os.environ.get(THREADS_ENV, ""))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def run_start(
    config_path: Path,
    *,
    explicit_config: bool,
    engines: str | None,
    local: bool,
    local_port: int,
    log_format: str | None,
    metrics: str | None,
    faults: str,
    one_offer_per_worker: bool = False,
    lanes: str | None = None,
) -> int:
    """Check everything that can be checked without starting anything, then run; every
    refusal is a WorkerError raised before the first log line (the CLI prints it as one
    ``error:`` line). Returns the exit status of the supervisor (``exit_codes.py``)."""
    config_path = command_config_path(config_path, explicit_config=explicit_config, local=local)
    if log_format not in (None, *LOG_FORMATS):
        raise UsageError(
            f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}"
        )
    if lanes not in (None, *LANE_MODES):
        raise UsageError(f"--lanes must be one of {', '.join(LANE_MODES)}, got {lanes!r}")
    if one_offer_per_worker and not local:
        raise UsageError("--one-offer-per-worker sets the --local studio's offer rule; add --local")
    if local and not 0 <= local_port <= MAX_PORT:
        raise UsageError(f"--local-port must be from 0 to {MAX_PORT}, got {local_port}")
    poll_s = registration_poll_s(local=local)
    check_threads_override()
    cfg = load_config(config_path)
    opts = StartOptions(
        config_path=config_path,
        engines=engines,
        faults=faults,
        metrics_listen=metrics if metrics is not None else cfg.metrics_listen,
        registration_poll_s=poll_s,
        local=LocalStudioSpec(local_port, one_offer_per_worker) if local else None,
        lanes=cast(LaneMode | None, lanes),
    )
    # The Supervisor checks again once it holds the config's lock (it takes that before it
    # creates anything: a second `start` on this config is refused there).
    code: int = ExitCode.FAILED
    early = probation_gate(config_path, time.time())
    if early is not None:  # this release's probation is over, or an install was cut short
        return reexec(config_path, early)
    with rollback_if_start_fails(config_path):
        check_start(cfg, opts, gpus=True)
        configure_logging(log_format or cfg.log_format)
        page_secret = secret_path(socket_path(config_path))
        start_telemetry(cfg, config_path, secret_files=(page_secret,))
        try:
            code = run_supervisor(opts)
        except Exception as exc:
            capture_crash(exc)  # sent before the SDK is closed below
            raise
        finally:
            stop_telemetry()
    plan = pending_reexec() or failed_probation(config_path, code)
    return code if plan is None else reexec(config_path, plan)
