"""What each local CLI subcommand does, as plain functions that return the text to print.

``cli.py`` only parses arguments and prints; the logic lives here so it is testable without
a terminal and so new subcommands (``start``, ``status``, ``pause``...) sit beside these.
None of these functions touches the network.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Final

from supervisor import __version__
from supervisor.config import load_config, render_config, save_config
from supervisor.errors import ControlError, SupervisorNotRunning, UsageError
from supervisor.owned_studio.ownership import REGISTRATION_FIELDS  # what --reset clears
from supervisor.studio.urls import normalize_base_url

log = logging.getLogger("supervisor.commands")

BUILD_VARIANT: Final = "cpu"
START_HINT: Final = "run `supervisor start` to auto-register"


def version_text() -> str:
    """``studio-worker <version> (<variant>)``, as the Rust worker prints it."""
    return f"studio-worker {__version__} ({BUILD_VARIANT})"


def register(cfg_path: Path, *, api_base_url: str | None = None, reset: bool = False) -> str:
    """Store ``api_base_url`` verbatim and/or clear local registration state; no network.

    The next ``supervisor start`` submits a registration request. Raises UrlError for a URL
    the worker could never use (the stored text stays exactly what was given otherwise).
    """
    loaded = cfg = load_config(cfg_path)
    if api_base_url is not None:
        normalize_base_url(api_base_url)
        cfg = cfg.replace(api_base_url=api_base_url)
    if reset:
        cfg = cfg.replace(**dict.fromkeys(REGISTRATION_FIELDS))
    save_config(cfg_path, cfg, previous=loaded)
    if reset:
        return f"local registration state cleared; {START_HINT}"
    return f"saved; {START_HINT} against {cfg.api_base_url}"


def show_config(cfg_path: Path) -> str:
    """``# <path>`` then the file's TOML, secrets included (it is the operator's own file)."""
    cfg = load_config(cfg_path)
    return f"# {cfg_path}\n{render_config(cfg)}"


def _display_float(value: float) -> str:
    """Rust's ``{}`` for f64: ``33`` for 33.0, ``12.5`` for 12.5."""
    return str(int(value)) if value.is_integer() else repr(value)


def set_threshold(cfg_path: Path, gb: float) -> str:
    """Save ``vram_threshold_gb`` (the largest job estimate this worker claims)."""
    if not math.isfinite(gb) or gb < 0:
        raise UsageError("threshold must be >= 0")
    loaded = load_config(cfg_path)
    # Only this key is written: the rest of the operator's file stays as it is.
    save_config(cfg_path, loaded.replace(vram_threshold_gb=gb), previous=loaded)
    log.info('vram threshold set op="set_threshold" vram_threshold_gb=%s', gb)
    return f"vram_threshold_gb = {_display_float(gb)}"


def status(cfg_path: Path) -> tuple[str, SupervisorNotRunning | None]:
    """The config lines of §8, then the live report of a running supervisor; with none
    running, the report says ``not running`` and the error comes back beside it (the CLI
    prints both: the registration lines are worth having either way)."""
    from supervisor.cli.status_view import render_status
    from supervisor.ops.control import ask, socket_path

    cfg = load_config(cfg_path)
    try:
        reply = ask(socket_path(cfg_path), "status")
    except SupervisorNotRunning as exc:
        return render_status(cfg_path, cfg, None), exc
    return render_status(cfg_path, cfg, reply.status), None


def control(cfg_path: Path, cmd: str) -> str:
    """Send ``pause`` / ``resume`` to the running supervisor; raises ControlError
    (SupervisorNotRunning when none runs for this config)."""
    from supervisor.ops.control import ask, socket_path

    reply = ask(socket_path(cfg_path), cmd)
    if not reply.ok:
        raise ControlError(f"the supervisor refused `{cmd}`: {reply.message}")
    return reply.message
