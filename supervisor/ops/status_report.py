"""What ``supervisor status`` shows of the running supervisor, built at the moment of asking
from the pool's slots, the GPU governor and the ``WorkerState``: no second bookkeeping.

Plain msgspec Structs, so the control socket sends them as JSON and the CLI renders them
(``supervisor.cli.status_view``). Building a report reads; it never changes anything.
"""

from __future__ import annotations

import os
import time

import msgspec

from supervisor import __version__
from supervisor.lanes.lane import Lane
from supervisor.pool.engine_pool import EnginePool
from supervisor.updates.state import STATUS
from supervisor.worker_state import WorkerState


class ModelView(msgspec.Struct):
    load_key: str
    size_bytes: int


class SlotView(msgspec.Struct):
    slot: str
    engine: str
    gpu: int | None
    state: str
    pid: int | None
    job_id: str | None
    jobs_done: int
    restarts: int
    restart_causes: dict[str, int]
    last_exit: str | None
    rss_bytes: int | None
    vram_bytes: int | None
    model_loads: int
    parked_for_s: float | None
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    models: list[ModelView] = msgspec.field(default_factory=list)


class GpuView(msgspec.Struct):
    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    health: str  # "healthy", or "suspect (<reason>)" / "probing (<reason>)"
    evictions: int


class JobView(msgspec.Struct):
    job_id: str
    kind: str
    model: str
    slot: str
    running_s: float
    phase: str
    step: int
    total: int
    lane: str = ""


class LaneView(msgspec.Struct):
    """One studio identity: its session and the slots it serves."""

    name: str
    worker_id: str | None
    session: str
    paused: bool
    seconds_since_heartbeat_ack: float | None
    reconnects: int
    slots: list[str]
    ended: str | None = None  # why it stopped, when it stopped on its own
    job_outcomes: dict[str, int] = msgspec.field(default_factory=dict)
    job_failures: dict[str, int] = msgspec.field(default_factory=dict)


class UpdateView(msgspec.Struct):
    installed: str
    checking: bool  # auto_update_enabled
    newest: str | None
    available: bool
    checked_s_ago: float | None
    error: str | None
    note: str | None  # why it is not installed, or what happens next


def _update_view() -> UpdateView:
    checked = STATUS.checked_at
    return UpdateView(
        installed=__version__,
        checking=STATUS.checking,
        newest=STATUS.newest,
        available=STATUS.available,
        checked_s_ago=round(time.time() - checked) if checked is not None else None,
        error=STATUS.error,
        note=STATUS.note,
    )


class StatusReport(msgspec.Struct):
    pid: int
    worker_id: str | None
    session: str
    paused: bool
    shutting_down: bool
    seconds_since_heartbeat_ack: float | None
    reconnects: int
    job_outcomes: dict[str, int]
    jobs: list[JobView]
    slots: list[SlotView]
    gpus: list[GpuView] = msgspec.field(default_factory=list)
    gpu_source: str | None = None  # "nvml", "simulated", or None without NVIDIA GPUs
    job_failures: dict[str, int] = msgspec.field(default_factory=dict)
    lanes: list[LaneView] = msgspec.field(default_factory=list)
    update: UpdateView | None = None


def _slot_views(pool: EnginePool, now: float) -> list[SlotView]:
    views = []
    for s in pool.slots:
        hb = s.last_heartbeat
        pin = s.pin
        held = pool.gpu.ledger.holdings(s.slot_id)
        views.append(
            SlotView(
                slot=s.slot_id,
                engine=s.engine,
                gpu=s.spec.gpu,
                state=s.state.value,
                pid=s.pid,
                job_id=s.job_id,
                jobs_done=s.jobs_done,
                restarts=s.restarts,
                restart_causes={str(c): n for c, n in s.restart_causes.items()},
                last_exit=s.last_exit,
                rss_bytes=hb.rss_bytes if hb else None,
                vram_bytes=s.vram_bytes(),
                model_loads=hb.model_loads if hb else 0,
                parked_for_s=round(s.parked_until - now, 1) if s.parked_until else None,
                gpu_name=pin.device.name if pin else None,
                gpu_uuid=pin.device.uuid if pin else None,
                models=[
                    ModelView(m.load_key, m.size_bytes)
                    for m in (held.models.values() if held else ())
                ],
            )
        )
    return views


def _gpu_views(pool: EnginePool) -> list[GpuView]:
    gpu = pool.gpu
    return [
        GpuView(
            index=index,
            name=reading.name,
            uuid=reading.uuid,
            total_bytes=reading.total_bytes,
            used_bytes=reading.used_bytes,
            free_bytes=reading.free_bytes,
            health=gpu.health[index].describe() if index in gpu.health else "healthy",
            evictions=gpu.evictions[index],
        )
        for index, reading in sorted(gpu.readings.items())
    ]


def _job_views(lane: Lane, now: float) -> list[JobView]:
    return [
        JobView(
            j.job_id,
            j.kind,
            j.model,
            j.slot_id,
            round(now - j.started, 1),
            j.phase,
            j.step,
            j.total,
            lane.name,
        )
        for j in lane.state.jobs.values()
    ]


def _ack_age(state: WorkerState) -> float | None:
    ack = state.seconds_since_heartbeat_ack()
    return round(ack, 1) if ack is not None else None


def _lane_view(lane: Lane) -> LaneView:
    state = lane.state
    return LaneView(
        name=lane.name,
        worker_id=state.worker_id,
        session=state.phase.value,
        paused=state.paused,
        seconds_since_heartbeat_ack=_ack_age(state),
        reconnects=state.reconnects,
        slots=[s.slot_id for s in lane.pool.slots],
        ended=lane.ended,
        job_outcomes=dict(state.job_outcomes),
        job_failures=dict(state.job_failures),
    )


def _summed(counters: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            total[key] = total.get(key, 0) + value
    return total


def build_status(pool: EnginePool, lanes: list[Lane]) -> StatusReport:
    """The report; the top-level session fields are the first lane's (the only one unless
    lanes are per GPU), jobs and counts are every lane's."""
    now = time.monotonic()
    first = lanes[0].state
    source = pool.gpu.source
    return StatusReport(
        pid=os.getpid(),
        worker_id=first.worker_id,
        session=first.phase.value,
        paused=all(lane.state.paused for lane in lanes),
        shutting_down=any(lane.state.shutting_down for lane in lanes),
        seconds_since_heartbeat_ack=_ack_age(first),
        reconnects=sum(lane.state.reconnects for lane in lanes),
        job_outcomes=_summed([dict(lane.state.job_outcomes) for lane in lanes]),
        jobs=[job for lane in lanes for job in _job_views(lane, now)],
        slots=_slot_views(pool, now),
        gpus=_gpu_views(pool),
        gpu_source=source.kind if source is not None else None,
        job_failures=_summed([dict(lane.state.job_failures) for lane in lanes]),
        lanes=[_lane_view(lane) for lane in lanes],
        update=_update_view(),
    )
