"""What each local CLI subcommand does, as plain functions that return the text to print.

``cli.py`` only parses arguments and prints; the logic lives here so it is testable without
a terminal and so new subcommands (``start``, ``status``, ``pause``...) sit beside these.
None of these functions touches the network.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from supervisor import __version__
from supervisor.config import IDENTITY_FIELDS, WorkerConfig, load_config, render_config, save_config
from supervisor.errors import ControlError, SupervisorNotRunning, UsageError, WorkerError
from supervisor.lane_identity import with_identity
from supervisor.studio.urls import normalize_base_url
from supervisor.threshold import check_threshold, save_threshold

log = logging.getLogger("supervisor.commands")

BUILD_VARIANT: Final = "cpu"
START_HINT: Final = "run `supervisor start` to auto-register"


def version_text() -> str:
    """``studio-worker <version> (<variant>)``, as the Rust worker prints it."""
    return f"studio-worker {__version__} ({BUILD_VARIANT})"


def register(
    cfg_path: Path,
    *,
    api_base_url: str | None = None,
    reset: bool = False,
    lane: str | None = None,
) -> str:
    """Store ``api_base_url`` verbatim and/or clear local registration state; no network.

    The next ``supervisor start`` submits a registration request. Raises UrlError for a URL
    the worker could never use (the stored text stays exactly what was given otherwise).
    ``reset`` clears every lane's identity, or with ``lane`` that lane's alone.
    """
    loaded = cfg = load_config(cfg_path)
    if lane is not None and not reset:
        raise UsageError("--lane goes with --reset: it names the lane whose registration to clear")
    if api_base_url is not None:
        normalize_base_url(api_base_url)
        cfg = cfg.replace(api_base_url=api_base_url)
    if reset and lane is None:
        cleared = {name: t.without_identity() for name, t in cfg.lane.items()}
        cfg = cfg.replace(lane={n: t for n, t in cleared.items() if t is not None})
        cfg = cfg.replace(**dict.fromkeys(IDENTITY_FIELDS))
    elif reset and lane is not None:
        table = lane_table(cfg_path, cfg, lane)
        forget = dict.fromkeys(IDENTITY_FIELDS)
        cfg = cfg.replace(**forget) if table is None else with_identity(cfg, table, forget)
    save_config(cfg_path, cfg, previous=loaded)
    if reset:
        which = f"lane {lane}'s" if lane else "local"
        return f"{which} registration state cleared; {START_HINT}"
    return f"saved; {START_HINT} against {cfg.api_base_url}"


def lane_names(cfg_path: Path, cfg: WorkerConfig) -> tuple[list[str], bool]:
    """The lanes, first (top-level identity) first, and whether the running supervisor
    told them (else they are what the config's ``engines`` and ``lanes`` make)."""
    from supervisor.lanes.plan import ONE_LANE_NAME, plan_lanes
    from supervisor.ops.control import ask, socket_path
    from supervisor.pool.slot_spec import parse_engines

    try:
        report = ask(socket_path(cfg_path), "status", timeout_s=2.0).status
        if report is not None and report.lanes:
            return [lane.name for lane in report.lanes], True
    except ControlError:
        pass
    try:
        specs = parse_engines(list(cfg.engines), with_synthetic=cfg.lanes == "one")
        return [plan.name for plan in plan_lanes(specs, cfg.lanes)], False
    except WorkerError:
        return [ONE_LANE_NAME], False


def lane_table(cfg_path: Path, cfg: WorkerConfig, lane: str) -> str | None:
    """Where ``lane``'s identity is kept: None for the first lane (the top-level keys),
    else its ``[lane.NAME]`` table (also one left by a lane no longer run). Raises
    UsageError for a lane this worker does not have, or cannot tell."""
    names, running = lane_names(cfg_path, cfg)
    if lane == names[0]:
        return None
    held = cfg.lane.get(lane)
    if lane in names or (held is not None and held.without_threshold() is not None):
        return lane
    hint = (
        ""
        if running
        else " (no supervisor runs for this config to ask, and its `lanes` and `engines` "
        "make only these: start it, or set `lanes` and `engines` in the config)"
    )
    raise UsageError(f"no lane `{lane}` for {cfg_path}; the lanes are {', '.join(names)}{hint}")


def show_config(cfg_path: Path) -> str:
    """``# <path>`` then the file's TOML, secrets included (it is the operator's own file)."""
    cfg = load_config(cfg_path)
    return f"# {cfg_path}\n{render_config(cfg)}"


def set_threshold(cfg_path: Path, gb: float, *, lane: str | None = None) -> str:
    """Save ``vram_threshold_gb`` (the largest job estimate this worker claims): for every
    lane (the top-level key; lanes' own values go), or with ``lane`` in its table."""
    check_threshold(gb)
    if lane is not None:
        lane_table(cfg_path, load_config(cfg_path), lane)  # refuses a lane it does not have
    return save_threshold(cfg_path, gb, lane)


def status(cfg_path: Path, *, lane: str | None = None) -> tuple[str, SupervisorNotRunning | None]:
    """The config lines of §8, then the live report of a running supervisor; with none
    running, the report says ``not running`` and the error comes back beside it (the CLI
    prints both: the registration lines are worth having either way)."""
    from supervisor.cli.status_view import only_lane, render_status
    from supervisor.ops.control import ask, socket_path

    cfg = load_config(cfg_path)
    try:
        reply = ask(socket_path(cfg_path), "status")
    except SupervisorNotRunning as exc:
        return render_status(cfg_path, cfg, None), exc
    report = reply.status
    if lane is not None and report is not None:
        report = only_lane(report, lane)
    return render_status(cfg_path, cfg, report), None


def control(cfg_path: Path, cmd: str, *, lane: str | None = None) -> str:
    """Send ``pause`` / ``resume`` to the running supervisor (every lane, or ``lane``);
    raises ControlError (SupervisorNotRunning when none runs for this config)."""
    from supervisor.ops.control import ask, socket_path

    reply = ask(socket_path(cfg_path), cmd, lane=lane)
    if not reply.ok:
        raise ControlError(f"the supervisor refused `{cmd}`: {reply.message}")
    return reply.message
