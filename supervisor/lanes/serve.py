"""Serve one lane: register it (once), then keep its studio session until the stop.

What ``supervisor start`` did for its single identity, now per lane: a lane whose
registration is rejected, whose token is revoked (401) or whose studio sends a fatal
error stops alone, with the exit code that says why, while the other lanes serve on; the
supervisor ends when every lane has stopped (``lanes_exit``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import anyio

from supervisor.config import WorkerConfig, current_config
from supervisor.errors import (
    AuthFailed,
    ConfigError,
    ReconnectExhausted,
    RegistrationAbortedError,
    SessionFatal,
    WorkerError,
)
from supervisor.exit_codes import ExitCode
from supervisor.lane_identity import fold_view, lane_view
from supervisor.lanes.lane import Lane
from supervisor.live_config import LiveConfig
from supervisor.studio.http import StudioHttp
from supervisor.studio.registration import ensure_registered, register_again
from supervisor.studio.session import SessionDeps, SessionTimings
from supervisor.studio.session_loop import serve_studio

log = logging.getLogger("supervisor.runtime")


@dataclass(frozen=True)
class LaneContext:
    """What every lane's loop shares."""

    config_path: Path
    initial: WorkerConfig  # the file's config at start (every lane's view derives from it)
    stop: anyio.Event
    http: StudioHttp
    registration_poll_s: float
    timings: SessionTimings | None
    owns_studio: bool  # `--local`: a 401 means the studio was reset, register again


async def serve_lane(lane: Lane, ctx: LaneContext) -> None:
    """Run the lane until the stop or until it cannot go on; sets ``lane.exit_code`` and,
    when it ended on its own, ``lane.ended`` (why)."""
    lane.exit_code, lane.ended = await _serve(lane, ctx)


async def _serve(lane: Lane, ctx: LaneContext) -> tuple[int, str | None]:
    cfg = lane_view(ctx.initial, lane.table, lane.name)
    try:
        cfg = await ensure_registered(
            ctx.config_path,
            cfg,
            lane.capabilities,
            ctx.stop,
            ctx.registration_poll_s,
            http=ctx.http,
            table=lane.table,
        )
        timings = ctx.timings or SessionTimings(drain_grace_s=cfg.drain_grace_s)
        # The file as it is now (another lane, or `set-threshold`, may have changed it
        # while this one waited for approval), holding this lane's identity even if
        # saving it failed.
        initial = fold_view(_file_now(ctx), lane.table, cfg)
        live = LiveConfig(ctx.config_path, initial, table=lane.table, lane=lane.name)
        deps = SessionDeps(
            config=live,
            pool=lane.pool,
            state=lane.state,
            logs=lane.logs,
            http=ctx.http,
            stop=ctx.stop,
            timings=timings,
            machine_suffix=lane.plan.machine_suffix,
        )
        # Registering again after a 401 is only for a studio this supervisor owns.
        reregister = (
            functools.partial(
                register_again,
                live,
                lane.capabilities,
                ctx.stop,
                ctx.registration_poll_s,
                http=ctx.http,
            )
            if ctx.owns_studio
            else None
        )
        await serve_studio(deps, reregister=reregister)
    except RegistrationAbortedError as exc:
        log.info("%s", exc)
        return exc.exit_code, None
    except AuthFailed as exc:
        return exc.exit_code, f"ws auth failed: {exc.reason}"
    except SessionFatal as exc:
        return exc.exit_code, f"ws fatal: {exc.reason}"
    except ReconnectExhausted as exc:
        return exc.exit_code, str(exc)
    except WorkerError as exc:  # e.g. a rejected registration (3), the studio unreachable (1)
        log.error("%s", exc)
        return exc.exit_code, str(exc)
    return ExitCode.OK, None


def _file_now(ctx: LaneContext) -> WorkerConfig:
    try:
        return current_config(ctx.config_path)
    except ConfigError:
        return ctx.initial  # unreadable now: the lane serves on with what it started with


def lanes_exit(failed: list[Lane], *, several: bool, requested: bool) -> tuple[int, str | None]:
    """The supervisor's exit code once every lane has stopped, and why lanes stopped on
    their own (None: none did). ``failed``: the lanes that ended on an error, in the order
    they did. A stop the operator asked for (a signal) is OK even after a lane failed;
    otherwise the first failure's code."""
    if not failed:
        return ExitCode.OK, None
    reason = (
        "; ".join(f"lane {lane.name}: {lane.ended}" for lane in failed)
        if several
        else failed[0].ended
    )
    first = failed[0].exit_code
    code = ExitCode.OK if requested or first is None else first
    return code, reason
