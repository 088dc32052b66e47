"""``supervisor start``: wire config, registration, pool, control socket and session
under one root task group, and turn signals into a two-stage shutdown.

One supervisor per config: the first thing it does is take ``daemon.lock`` beside the
config (``instance_lock``), before it writes the config or creates a socket, a studio or a
host, and it holds it to its last line. With ``--local`` (``StartOptions.local``) it owns a
local studio: started first, kept up while it runs (``owned_studio.keeper``), stopped
last; and when that studio no longer knows the worker (401: its data was reset) it
registers with it again by itself, which it never does with a studio it does not own.

First SIGINT/SIGTERM: stop accepting (offers are rejected ``paused``), let running jobs
finish within the drain grace, ship the last log batch, close the session with 1000
``session ended``, stop the hosts politely. Second signal: stop now (hosts are killed;
their jobs are released by the studio when the socket closes). The last log line says
how it ended.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from engines.cache_budget import budget_bytes
from engines.catalog import missing_backend
from supervisor.config import LaneMode, WorkerConfig, load_config, save_config, secure_config
from supervisor.errors import (
    ControlListenError,
    LocalStudioError,
    MetricsListenError,
    StartupError,
    UrlError,
)
from supervisor.exit_codes import EXIT_CODES, ExitCode
from supervisor.instance_lock import hold_instance_lock
from supervisor.lanes.context import CURRENT_LANE
from supervisor.lanes.lane import Lane, make_lanes
from supervisor.lanes.log_routing import LaneShipHandler
from supervisor.lanes.plan import plan_lanes
from supervisor.lanes.serve import LaneContext, lanes_exit, serve_lane
from supervisor.ops.control import ControlServer, socket_path
from supervisor.ops.metrics_server import MetricsServer, parse_listen
from supervisor.owned_studio.keeper import StudioKeeper
from supervisor.owned_studio.launch import LocalStudioSpec
from supervisor.owned_studio.ownership import check_owned_config, pointed_at, studio_data_dir
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.gpu_setup import prepared_gpus
from supervisor.pool.policies import RecycleLimits
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import SlotSpec, parse_engines
from supervisor.studio.http import StudioHttp
from supervisor.studio.session import SessionTimings
from supervisor.studio.urls import build_connect_url, normalize_base_url
from supervisor.updates.restart import cancel_reexec
from supervisor.updates.watch import UpdateWatch

log = logging.getLogger("supervisor.runtime")

MIB = 2**20


@dataclass(frozen=True)
class StartOptions:
    config_path: Path
    engines: str | None = None  # overrides the config's `engines`
    faults: str = ""  # synthetic fault injection (drills, tests)
    timings: SessionTimings | None = None
    registration_poll_s: float = 30.0
    heartbeat_s: float = 1.0  # host -> supervisor
    metrics_listen: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz
    local: LocalStudioSpec | None = None  # `--local`: run and own a local studio
    lanes: LaneMode | None = None  # overrides the config's `lanes`


def lane_mode(cfg: WorkerConfig, opts: StartOptions) -> LaneMode:
    return opts.lanes or cfg.lanes


def slot_specs(cfg: WorkerConfig, opts: StartOptions) -> list[SlotSpec]:
    """The slots to run: ``--engines`` if given, else the config's ``engines``. Raises
    SlotSpecError for a list that does not parse, StartupError for a missing library.
    With lanes per GPU no synthetic slot is added unless listed: it advertises every
    kind, and the studio picks a worker by its kinds."""
    one = lane_mode(cfg, opts) == "one"
    if opts.engines is not None:
        specs = parse_engines(opts.engines, with_synthetic=one)
    else:
        source = f"`engines` of {opts.config_path}"
        specs = parse_engines(list(cfg.engines), with_synthetic=one, source=source)
    problems = [p for p in (missing_backend(e) for e in sorted({s.engine for s in specs})) if p]
    if problems:
        raise StartupError("; ".join(problems))
    return specs


def check_studio_url(cfg: WorkerConfig, config_path: Path) -> None:
    """Refuse an ``api_base_url`` that neither the HTTP side nor the WebSocket side can use,
    now: otherwise it fails only after the hosts are up (or, registered, on every
    reconnect). Raises UrlError."""
    try:
        normalize_base_url(cfg.api_base_url)
        build_connect_url(cfg.api_base_url, cfg.worker_id or "worker")
    except UrlError as exc:
        raise UrlError(
            f"{exc} (api_base_url in {config_path}); set the studio's http(s) URL with "
            "`supervisor register --api-base-url URL`"
        ) from None


def check_start(
    cfg: WorkerConfig, opts: StartOptions, *, studio_url: bool = True, gpus: bool = False
) -> list[SlotSpec]:
    """Every start-up check that needs no process, socket or network, run before anything
    is created: the engine list and its libraries, the studio URL (unless ``studio_url``
    is False), or with ``--local`` that the config is not another studio's (the local
    studio's URL replaces it), the metrics address, and with ``gpus`` that every
    ``engine@N`` names a GPU that is there (``DeviceIndexError``). Returns the slots."""
    specs = slot_specs(cfg, opts)
    plan_lanes(specs, lane_mode(cfg, opts))  # per GPU: every slot must be on one
    if opts.local is not None:
        check_owned_config(cfg, opts.config_path)
    elif studio_url:
        check_studio_url(cfg, opts.config_path)
    listen = opts.metrics_listen or cfg.metrics_listen
    if listen:
        parse_listen(listen)  # binding it is tried in `run`, after the pool has started
    if gpus:
        with prepared_gpus(specs, cfg, os.environ):
            pass  # opening and pinning is the check; the Supervisor does it again for real
    return specs


def pool_settings(cfg: WorkerConfig, opts: StartOptions) -> PoolSettings:
    return PoolSettings(
        models_root=Path(cfg.models_root),
        models_max_bytes=budget_bytes(cfg.models_max_gb),
        heartbeat_s=opts.heartbeat_s,
        ready_timeout_s=cfg.ready_timeout_s,
        heartbeat_timeout_idle_s=cfg.heartbeat_timeout_idle_s,
        heartbeat_timeout_busy_s=cfg.heartbeat_timeout_busy_s,
        heartbeat_timeout_loading_s=cfg.heartbeat_timeout_loading_s,
        download_stall_s=cfg.download_stall_s,
        download_deadline_s=cfg.download_deadline_s,
        restart_backoff_base_s=cfg.restart_backoff_base_s,
        restart_backoff_max_s=cfg.restart_backoff_max_s,
        crash_loop_max=cfg.crash_loop_max,
        crash_loop_window_s=cfg.crash_loop_window_s,
        crash_loop_cooldown_s=cfg.crash_loop_cooldown_s,
        recycle=RecycleLimits(
            after_jobs=cfg.recycle_after_jobs,
            rss_growth_bytes=cfg.recycle_rss_growth_mb * MIB,
            vram_growth_bytes=cfg.recycle_vram_growth_mb * MIB,
        ),
        faults=opts.faults,
    )


class Supervisor:
    """The running supervisor: everything ``status``, metrics and the session read."""

    def __init__(self, opts: StartOptions) -> None:
        self.opts = opts
        # Before anything else, the config file included: a second supervisor on this config
        # must leave the first one's socket, studio, hosts and registration alone.
        lock = hold_instance_lock(opts.config_path)
        # Closed at the end of `run` (the lock last), or here when the pool cannot be made.
        with contextlib.ExitStack() as resources:
            resources.callback(lock.release)
            cfg = load_config(opts.config_path)
            secure_config(opts.config_path, cfg)  # logging is set up by now: the warning shows
            self.specs = check_start(cfg, opts)  # raises before anything is created
            gpus = resources.enter_context(prepared_gpus(self.specs, cfg, os.environ))
            self.pool = EnginePool(self.specs, pool_settings(cfg, opts), gpus)
            self._resources = resources.pop_all()
        listen = opts.metrics_listen or cfg.metrics_listen
        self.lanes = make_lanes(plan_lanes(self.specs, lane_mode(cfg, opts)), self.pool)
        self.keeper = (
            StudioKeeper(studio_data_dir(opts.config_path), opts.local) if opts.local else None
        )
        self.stop = anyio.Event()
        self.stop_reason = "session ended"
        self._failed: list[Lane] = []  # lanes that ended on an error, in order
        self._stopped_by_lane = False  # `stop` was set by a lane's failure, not a signal
        self.initial_config = cfg
        self._started = time.monotonic()
        why = functools.partial(setattr, self, "stop_reason")  # an update names its stop
        self.updates = UpdateWatch(cfg, opts.config_path, self.lanes, self.stop, why)
        self.metrics = (
            MetricsServer(listen, self.pool, self.lanes, opts.config_path) if listen else None
        )

    async def run(self) -> int:
        handler = LaneShipHandler(self.lanes)
        logging.getLogger().addHandler(handler)
        page_logs = self.metrics.logs if self.metrics else logging.NullHandler()
        logging.getLogger().addHandler(page_logs)  # the status page's last lines
        raised: list[logging.Logger] = []
        for name in ("supervisor", "engines"):
            # The studio wants INFO lines even when the embedding app left logging unset.
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.INFO)
                raised.append(logger)
        code = 0
        startup_error: MetricsListenError | LocalStudioError | ControlListenError | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_signals, tg.cancel_scope)
                startup_error = await self._start_parts(tg)
                if startup_error is None:
                    tg.start_soon(self.updates.run)
                    await self._wait_for_hosts()
                    code = await self._serve_studio()
                    await self._drain_pool()
                tg.cancel_scope.cancel()
            if startup_error is not None:
                code = startup_error.exit_code  # what the summary line and the CLI report
                raise startup_error
        finally:
            self._resources.close()
            logging.getLogger().removeHandler(handler)
            logging.getLogger().removeHandler(page_logs)
            self._log_summary(code)
            for logger in raised:  # leave the embedding process's logging as it was
                logger.setLevel(logging.NOTSET)
        return code

    async def _start_parts(
        self, tg: anyio.abc.TaskGroup
    ) -> MetricsListenError | LocalStudioError | ControlListenError | None:
        """The owned studio first (one that cannot start spawns no host), then the hosts,
        the control socket and the metrics endpoint; returns the start-up error, if any."""
        if self.keeper is not None:
            studio_error = await self._start_local_studio(tg, self.keeper)
            if studio_error is not None:
                return studio_error
        await tg.start(self.pool.serve)
        control = ControlServer(socket_path(self.opts.config_path), self.pool, self.lanes)
        try:
            await tg.start(control.serve)
        except ControlListenError as exc:
            self.stop_reason = str(exc)
            return exc
        if self.metrics is not None:
            return await self._start_metrics(tg, self.metrics)
        return None

    async def _start_metrics(
        self, tg: anyio.abc.TaskGroup, metrics: MetricsServer
    ) -> MetricsListenError | None:
        """Start the metrics endpoint; a port it cannot bind stops the start-up (the
        operator asked for metrics), returned so it leaves ``run`` as itself, not grouped."""
        try:
            await tg.start(metrics.serve)
        except MetricsListenError as exc:
            self.stop_reason = str(exc)
            return exc
        return None

    async def _start_local_studio(
        self, tg: anyio.abc.TaskGroup, keeper: StudioKeeper
    ) -> LocalStudioError | None:
        """Start the owned studio and point the config at it (its registration, if any,
        was checked to be a local one by ``check_start``); a studio that cannot start is
        returned, like a metrics port, to leave ``run`` as itself."""
        try:
            url = await tg.start(keeper.serve)
        except LocalStudioError as exc:
            self.stop_reason = str(exc)
            return exc
        changed = pointed_at(self.initial_config, url)
        if changed is not None:
            save_config(self.opts.config_path, changed, previous=self.initial_config)
            self.initial_config = changed
        return None

    async def _serve_studio(self) -> int:
        """Every lane's registration and sessions, side by side, until each has stopped."""
        async with StudioHttp() as http:
            ctx = LaneContext(
                config_path=self.opts.config_path,
                initial=self.initial_config,
                stop=self.stop,
                http=http,
                registration_poll_s=self.opts.registration_poll_s,
                timings=self.opts.timings,
                owns_studio=self.keeper is not None,
            )
            async with anyio.create_task_group() as tg:
                for lane in self.lanes:
                    tg.start_soon(self._serve_lane, lane, ctx)
        requested = self.stop.is_set() and not self._stopped_by_lane
        code, reason = lanes_exit(self._failed, several=len(self.lanes) > 1, requested=requested)
        if reason is not None:
            self.stop_reason = f"{self.stop_reason} ({reason})" if requested else reason
        return code

    async def _serve_lane(self, lane: Lane, ctx: LaneContext) -> None:
        """One lane's loop. A lane that ends on an error an operator must fix (rejected,
        revoked: systemd would not restart it either) stops alone; one that a restart may
        cure (a fatal studio error, the reconnect cap) stops every lane, so the supervisor
        exits with its code and the service manager restarts the whole worker."""
        if len(self.lanes) > 1:
            CURRENT_LANE.set(lane.name)  # this task's log lines ship on the lane's session
        await serve_lane(lane, ctx)
        if lane.exit_code in (None, ExitCode.OK):
            return
        self._failed.append(lane)
        serving = [other.name for other in self.lanes if other.exit_code is None]
        if not serving or self.stop.is_set():
            return
        if EXIT_CODES[ExitCode(lane.exit_code)].systemd_restarts:
            log.error(
                "lane %s stopped (%s); stopping every lane so the worker restarts whole",
                lane.name,
                lane.ended,
            )
            self._stopped_by_lane = True
            self.stop.set()
        else:
            log.error(
                "lane %s stopped (%s); still serving: %s", lane.name, lane.ended, ", ".join(serving)
            )

    async def _wait_for_hosts(self) -> None:
        """Give the hosts a chance to come up so the first hello advertises real models;
        a host that cannot start is reported by its slot and does not block the session."""
        timeout = self.initial_config.ready_timeout_s
        ready = False
        async with anyio.create_task_group() as tg:

            async def stop_waiting() -> None:
                await self.stop.wait()  # a stop during start-up must not wait for the hosts
                tg.cancel_scope.cancel()

            tg.start_soon(stop_waiting)
            ready = await self.pool.wait_ready(timeout)
            tg.cancel_scope.cancel()
        if not ready and not self.stop.is_set():
            log.warning("not every engine host was ready after %.0f s; connecting anyway", timeout)

    async def _drain_pool(self) -> None:
        grace = self.initial_config.drain_grace_s
        with anyio.CancelScope(shield=True):
            await self.pool.drain(grace)

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                cancel_reexec()  # an operator's stop wins over an update's restart
                name = signal.Signals(signum).name
                if not self.stop.is_set():
                    log.info('op="shutdown" signal="%s": draining (a second signal forces)', name)
                    self.stop_reason = f"{name} received"
                    self.stop.set()
                else:
                    log.warning('op="shutdown" signal="%s": forcing shutdown now', name)
                    self.stop_reason = f"{name} received twice (forced)"
                    scope.cancel()
                    return

    def _log_summary(self, code: int) -> None:
        outcomes: Counter[str] = Counter()
        for lane in self.lanes:
            outcomes.update(lane.state.job_outcomes)
        restarts = sum(s.restarts for s in self.pool.slots)
        log.info(
            "supervisor stopped: reason=%s exit_code=%d uptime_s=%d jobs_done=%d "
            "jobs_failed=%d rejected=%d host_restarts=%d",
            self.stop_reason,
            code,
            time.monotonic() - self._started,
            outcomes["done"],
            outcomes["failed_retryable"] + outcomes["failed_final"],
            outcomes["rejected_busy"] + outcomes["rejected_paused"],
            restarts,
        )


def run_supervisor(opts: StartOptions) -> int:
    return anyio.run(Supervisor(opts).run, backend="asyncio")
