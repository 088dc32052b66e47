"""``supervisor start``: resolve options (``--local`` included) and run the supervisor."""

from __future__ import annotations

import contextlib
from pathlib import Path

from supervisor.config import load_config
from supervisor.local_launch import local_config_path, local_studio
from supervisor.logging_setup import configure_logging
from supervisor.runtime import StartOptions, run_supervisor


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
) -> int:
    if local and not explicit_config:
        config_path = local_config_path()
    cfg = load_config(config_path)
    configure_logging(log_format or cfg.log_format)
    opts = StartOptions(
        config_path=config_path,
        engines=engines,
        faults=faults,
        metrics_listen=metrics if metrics is not None else cfg.metrics_listen,
    )
    with local_studio(config_path, local_port) if local else contextlib.nullcontext():
        return run_supervisor(opts)
