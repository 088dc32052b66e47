"""Run the real supervisor in-process (real engine host subprocesses, real ZeroMQ, real
sockets) against a studio peer, with short timings so session tests stay fast."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from supervisor.config import LaneMode, WorkerConfig, save_config
from supervisor.pool.slot import Slot
from supervisor.runtime import StartOptions, Supervisor
from supervisor.studio.session import SessionTimings

TOKEN = "tok-SECRET-do-not-log-4242"
FAST = SessionTimings(
    heartbeat_s=0.2,
    log_ship_s=0.1,
    read_idle_s=5.0,
    connect_timeout_s=2.0,
    drain_grace_s=10.0,
    reconnect_base_s=0.05,
    reconnect_max_s=0.2,
)


def write_config(path: Path, base_url: str, **overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = {
        "api_base_url": base_url,
        "worker_id": "w-1",
        "auth_token": TOKEN,
        "models_root": path.parent / "models",
        "engines": ("synthetic",),
        "restart_backoff_base_s": 0.05,
        "drain_grace_s": 10.0,
    }
    values.update(overrides)
    cfg = WorkerConfig(**values)
    save_config(path, cfg)
    return cfg


@dataclass
class RunningSupervisor:
    sup: Supervisor
    config_path: Path
    exit_code: int | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    async def wait_exit(self, timeout_s: float = 15.0) -> int:
        with anyio.fail_after(timeout_s):
            await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code


@contextlib.asynccontextmanager
async def running_supervisor(
    tmp_path: Path,
    base_url: str,
    *,
    engines: str = "synthetic",
    faults: str = "",
    timings: SessionTimings = FAST,
    lanes: LaneMode | None = None,
    **config: Any,
) -> AsyncIterator[RunningSupervisor]:
    path = tmp_path / "config.toml"
    write_config(path, base_url, **config)
    sup = Supervisor(
        StartOptions(
            config_path=path,
            engines=engines,
            faults=faults,
            timings=timings,
            registration_poll_s=0.2,
            heartbeat_s=0.2,
            lanes=lanes,
        )
    )
    running = RunningSupervisor(sup, path)

    async def run() -> None:
        try:
            running.exit_code = await sup.run()
        finally:
            running.done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield running
        finally:
            sup.stop.set()
            with anyio.fail_after(30):
                await running.done.wait()


def engine_slot(run: RunningSupervisor, engine: str) -> Slot:
    """The one slot of ``engine`` in a supervisor started with a single slot of it."""
    (slot,) = [s for s in run.sup.pool.slots if s.engine == engine]
    return slot


def model_loads(slot: Slot) -> int:
    """How many times the slot's host has loaded a model (from its last heartbeat)."""
    hb = slot.last_heartbeat
    assert hb is not None
    return hb.model_loads
