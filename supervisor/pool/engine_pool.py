"""The engine pool: the ROUTER socket, every slot and the GPU memory governor, plus the
questions the session asks.

``EnginePool.serve`` runs inside the supervisor's root task group until cancelled or
drained. Routing reads ``views`` and ``memory`` in one step, and the session reserves the
slot it chose (and the GPU memory the job needs) with ``reserve`` before it accepts, then
hands the job to ``Slot.execute``. Every status surface (``supervisor status``, metrics,
capabilities) reads the slots and the governor themselves: there is no second bookkeeping.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from engines.cpu_threads import (
    THREADS_ENV,
    available_cores,
    parse_threads_override,
    threads_per_host,
)
from protocol.tasks import TASK_KINDS
from supervisor.gpu.governor import GpuGovernor
from supervisor.gpu.picture import MemoryPicture
from supervisor.pool.gpu_setup import GpuSetup
from supervisor.pool.ipc_router import IpcRouter
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot import Slot
from supervisor.pool.slot_spec import SlotSpec
from supervisor.pool.slot_state import SlotState

log = logging.getLogger("supervisor.pool")


@dataclass(frozen=True)
class SlotView:
    """What routing needs to know of one slot, read in the same step as the decision."""

    slot_id: str
    engine: str
    free: bool
    gpu_suspect: bool = False  # on a GPU that takes no work until a probe passes


def make_run_dir() -> Path:
    """A private (0700) directory for the IPC socket; short, because ipc:// paths are."""
    return Path(tempfile.mkdtemp(prefix="studio-worker-"))


class EnginePool:
    def __init__(
        self, specs: list[SlotSpec], settings: PoolSettings, gpus: GpuSetup | None = None
    ) -> None:
        settings = _with_cpu_threads(specs, settings)
        gpus = gpus or GpuSetup()
        self.settings = settings
        self.run_dir = make_run_dir()
        self.router = IpcRouter(self.run_dir)
        self.poison = PoisonJobs(settings.poison_strikes)
        self._listeners: list[Callable[[], None]] = []
        self.gpu = GpuGovernor(gpus.source, gpus.devices, gpus.settings, self._changed)
        self.slots = [
            Slot(
                spec,
                settings,
                self.router,
                self.poison,
                self.gpu,
                self._changed,
                pin=gpus.pins.get(spec.gpu) if spec.gpu is not None else None,
            )
            for spec in specs
        ]
        for slot in self.slots:
            self.gpu.register(slot)

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the router and every slot until all slots are stopped (drain) or cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.router.serve)
                await tg.start(self.gpu.serve)
                async with anyio.create_task_group() as slots_tg:
                    for slot in self.slots:
                        slots_tg.start_soon(slot.run)
                    task_status.started()
                tg.cancel_scope.cancel()
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once every slot is ready (for start-up and tests)."""
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            if not await slot.wait_ready(max(0.0, deadline - time.monotonic())):
                return False
        return True

    async def drain(self, grace_s: float) -> None:
        """Stop taking jobs, let running ones finish within ``grace_s``, then stop hosts."""
        for slot in self.slots:
            slot.request_drain()
        with anyio.move_on_after(grace_s) as scope:
            for slot in self.slots:
                await slot.wait_stopped()
        if scope.cancelled_caught:
            busy = [s.slot_id for s in self.slots if s.state is not SlotState.STOPPED]
            log.warning("drain grace of %.0f s over; stopping %s now", grace_s, ", ".join(busy))
            for slot in self.slots:
                slot.force_stop()
            for slot in self.slots:
                await slot.wait_stopped()

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Called on every slot state change (capability refresh, metrics)."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in self._listeners:
            fn()

    # --- questions for routing ------------------------------------------------------------

    def views(self, only: Collection[str] | None = None) -> list[SlotView]:
        """Every slot (or those of ``only``, a lane's) as routing sees it, now (a slot on a
        suspect GPU is not free)."""
        return [
            SlotView(
                s.slot_id,
                s.engine,
                self._takes_jobs(s),
                not self.gpu.takes_work(s.device_index),
            )
            for s in self._among(only)
        ]

    def _among(self, only: Collection[str] | None) -> list[Slot]:
        return self.slots if only is None else [s for s in self.slots if s.slot_id in only]

    def memory(self, only: Collection[str] | None = None) -> MemoryPicture:
        """The GPU memory picture for admission, read in the same step as ``views``."""
        return self.gpu.picture(only)

    def free_slots(self, engine: str) -> int:
        return sum(1 for s in self.slots if s.engine == engine and self._takes_jobs(s))

    def _takes_jobs(self, slot: Slot) -> bool:
        return slot.is_free and self.gpu.takes_work(slot.device_index)

    def _serving(self, slot: Slot) -> bool:
        return slot.is_serving and self.gpu.takes_work(slot.device_index)

    def capacity(self, only: Collection[str] | None = None) -> int:
        """How many jobs this worker (or a lane: ``only``) can run at once now (slots
        serving)."""
        return sum(1 for s in self._among(only) if self._serving(s))

    def models_per_kind(self, only: Collection[str] | None = None) -> dict[str, list[str]]:
        """Union of what serving slots advertise, kinds in canonical order, first seen wins."""
        merged: dict[str, list[str]] = {}
        for kind in TASK_KINDS:
            for slot in self._among(only):
                if self._serving(slot) and slot.ready_info is not None:
                    for model in slot.ready_info.models_per_kind.get(kind, []):
                        bucket = merged.setdefault(kind, [])
                        if model not in bucket:
                            bucket.append(model)
        return merged

    # --- jobs -----------------------------------------------------------------------------

    def slot(self, slot_id: str) -> Slot:
        for slot in self.slots:
            if slot.slot_id == slot_id:
                return slot
        raise KeyError(slot_id)

    def reserve(self, slot_id: str, job_id: str, load_key: str = "", need_bytes: int = 0) -> Slot:
        """Claim the slot routing chose for a job about to be accepted, and the GPU memory
        its load needs. The caller reserves in the same step as the decision (no ``await``
        between), so the slot is still free and the memory still there."""
        slot = self.slot(slot_id)
        slot.core.reserve(job_id)
        if need_bytes > 0:
            self.gpu.reserve(job_id, slot_id, load_key, need_bytes)
        self._changed()
        return slot

    def release(self, slot: Slot, job_id: str) -> None:
        """The accept never went out: the reservation is void."""
        slot.core.release(job_id)
        self.gpu.release(job_id)
        self._changed()


def _with_cpu_threads(specs: list[SlotSpec], settings: PoolSettings) -> PoolSettings:
    """Settings whose ``cpu_threads`` is resolved: each real engine host (GPU ones too: their
    libraries still run threads on the CPU) gets an equal share of the cores, so hosts
    computing at the same time do not oversubscribe them."""
    computing = sum(spec.engine != "synthetic" for spec in specs)
    if settings.cpu_threads is not None:
        if settings.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, got {settings.cpu_threads}")
        return settings
    if computing == 0:
        return settings
    cores = available_cores()
    override = parse_threads_override(os.environ.get(THREADS_ENV, ""))
    threads = override if override is not None else threads_per_host(cores, computing)
    source = THREADS_ENV if override is not None else f"{cores} core(s) shared equally"
    log.info(
        "engine hosts compute on %d CPU thread(s) each (%s; %d engine slot(s))",
        threads,
        source,
        computing,
    )
    if threads * computing > cores:
        log.warning(
            "%d engine slot(s) at %d CPU thread(s) each ask for more than the %d core(s) "
            "available: jobs that run at the same time will slow each other down a lot",
            computing,
            threads,
            cores,
        )
    return dataclasses.replace(settings, cpu_threads=threads)
