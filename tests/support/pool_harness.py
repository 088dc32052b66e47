"""Run a real ``EnginePool`` (synthetic engine hosts as subprocesses, real ZeroMQ over ipc://)
with short timings, and fail the test if any host process it spawned outlives it.

``running_pool`` is a factory fixture in context-manager form: it starts the pool in a task
group, records the pid (and start time, against pid reuse) of every host generation the
moment it is spawned, and on the way out drains the pool, waits for ``serve`` to return and
checks with psutil that every recorded host is gone and the private run directory removed.
State waits go through ``RunningPool.wait_until``, woken by the pool's change listener:
no test sleeps to wait for a condition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import TaskGroup

from protocol import ipc
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource, Task
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.job_outcome import JobFailedOutcome, JobOutcome, JobSucceeded
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot import Slot
from supervisor.pool.slot_spec import parse_engines
from supervisor.pool.slot_state import SlotState

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))

# Short timings for tests; a test overrides what it exercises.
FAST: dict[str, Any] = {
    "heartbeat_s": 0.1,
    "ready_timeout_s": 15.0,
    "heartbeat_timeout_idle_s": 3.0,
    "heartbeat_timeout_busy_s": 3.0,
    "heartbeat_timeout_loading_s": 5.0,
    "restart_backoff_base_s": 0.05,
    "restart_backoff_max_s": 0.2,
    "crash_loop_max": 5,
    "crash_loop_window_s": 60.0,
    "crash_loop_cooldown_s": 1.0,
    "shutdown_grace_s": 2.0,
    "term_grace_s": 1.0,
    "watchdog_tick_s": 0.02,
}
TEARDOWN_DRAIN_GRACE_S = 5.0
TEARDOWN_TIMEOUT_S = 20.0


def llm_task(text: str = "hello there") -> LlmTask:
    return LlmTask(messages=[ChatMessage("user", text)], max_tokens=16)


def run_job(
    job_id: str, model: str = "synthetic", task: Task | None = None, deadline_s: float = 30.0
) -> ipc.RunJob:
    return ipc.RunJob(job_id, model, task or llm_task(), SYNTHETIC, deadline_s)


def failed(outcome: JobOutcome | None) -> JobFailedOutcome:
    assert isinstance(outcome, JobFailedOutcome), f"expected a failure, got {outcome!r}"
    return outcome


def succeeded(outcome: JobOutcome | None) -> JobSucceeded:
    assert isinstance(outcome, JobSucceeded), f"expected a success, got {outcome!r}"
    return outcome


@dataclass(frozen=True)
class HostRecord:
    slot_id: str
    generation: int
    pid: int
    create_time: float | None  # None: already gone when recorded


@dataclass
class JobHandle:
    """A job running on a slot in the background; ``done`` fires with its outcome."""

    run: ipc.RunJob
    slot: Slot
    outcome: JobOutcome | None = None
    finished_at: float = 0.0
    progress: list[ipc.Progress] = field(default_factory=list)
    progressed: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)

    def on_progress(self, msg: ipc.Progress) -> None:
        self.progress.append(msg)
        self.progressed.set()

    async def wait(self, timeout_s: float = 10.0) -> JobOutcome:
        with anyio.fail_after(timeout_s):
            await self.done.wait()
        assert self.outcome is not None
        return self.outcome

    async def wait_running(self, timeout_s: float = 5.0) -> None:
        """Until the host has reported progress: the job is inside the engine."""
        with anyio.fail_after(timeout_s):
            await self.progressed.wait()


class RunningPool:
    def __init__(self, pool: EnginePool) -> None:
        self.pool = pool
        self.hosts: list[HostRecord] = []
        self._seen: set[tuple[str, int]] = set()
        self._changed = anyio.Event()
        pool.add_listener(self._on_change)

    @property
    def slot(self) -> Slot:
        return self.pool.slots[0]

    def _on_change(self) -> None:
        for slot in self.pool.slots:
            host = slot.host
            if host is not None and (slot.slot_id, slot.generation) not in self._seen:
                self._seen.add((slot.slot_id, slot.generation))
                try:
                    created: float | None = psutil.Process(host.pid).create_time()
                except psutil.NoSuchProcess:
                    created = None
                self.hosts.append(HostRecord(slot.slot_id, slot.generation, host.pid, created))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
    ) -> None:
        """Wait for ``predicate`` to hold, re-checking on every slot state change."""
        try:
            with anyio.fail_after(timeout_s):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None

    async def ready(self, timeout_s: float = 15.0) -> None:
        assert await self.pool.wait_ready(timeout_s), "pool did not become ready"

    async def ready_again(self, slot: Slot, old_pid: int | None, timeout_s: float = 10.0) -> None:
        """Until ``slot`` is ready on a host other than ``old_pid``."""
        await self.wait_until(
            lambda: slot.state is SlotState.READY and slot.pid not in (None, old_pid),
            timeout_s,
            f"{slot.slot_id} ready on a new host",
        )

    def start_job(self, tg: TaskGroup, run: ipc.RunJob, engine: str = "synthetic") -> JobHandle:
        free = [s for s in self.pool.slots if s.engine == engine and s.is_free]
        assert free, f"no free {engine} slot"
        return self.start_on(tg, self.pool.reserve(free[0].slot_id, run.job_id), run)

    def start_on(self, tg: TaskGroup, slot: Slot, run: ipc.RunJob) -> JobHandle:
        handle = JobHandle(run, slot)

        async def execute() -> None:
            try:
                handle.outcome = await slot.execute(run, handle.on_progress)
                handle.finished_at = time.monotonic()
            finally:
                handle.done.set()

        tg.start_soon(execute)
        return handle

    async def run_one(self, run: ipc.RunJob, timeout_s: float = 10.0) -> JobOutcome:
        async with anyio.create_task_group() as tg:
            handle = self.start_job(tg, run)
        return await handle.wait(timeout_s)

    def leaked_hosts(self) -> list[HostRecord]:
        leaked = []
        for record in self.hosts:
            try:
                proc = psutil.Process(record.pid)
                if proc.create_time() == record.create_time and (
                    proc.status() != psutil.STATUS_ZOMBIE
                ):
                    leaked.append(record)
            except psutil.NoSuchProcess:
                pass
        return leaked


def pool_settings(tmp_path: Path, **overrides: Any) -> PoolSettings:
    values = {**FAST, **overrides}
    return PoolSettings(models_root=tmp_path / "models", **values)


@contextlib.asynccontextmanager
async def running_pool(
    tmp_path: Path, engines: str = "synthetic", **settings: Any
) -> AsyncIterator[RunningPool]:
    """A serving pool of ``engines`` slots (e.g. ``"synthetic,synthetic"``); see the module doc."""
    pool = EnginePool(parse_engines(engines), pool_settings(tmp_path, **settings))
    running = RunningPool(pool)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pool.serve)
            try:
                yield running
            finally:
                with anyio.fail_after(TEARDOWN_TIMEOUT_S, shield=True):
                    await pool.drain(TEARDOWN_DRAIN_GRACE_S)
    finally:
        leaked = running.leaked_hosts()
        for record in leaked:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(record.pid).kill()
    assert not leaked, f"engine hosts outlived the pool: {leaked}"
    assert not pool.run_dir.exists(), "the pool left its run directory behind"
    assert all(s.state is SlotState.STOPPED for s in pool.slots)


def with_faults(settings: PoolSettings, faults: str) -> PoolSettings:
    return dataclasses.replace(settings, faults=faults)
