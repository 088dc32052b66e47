"""A running lane: its plan, its share of the pool, its own session state and log queue.

Everything a single-identity worker kept once (``WorkerState``: session phase, current
jobs, pause, outcomes; the studio-bound log queue) a lane keeps for itself; the pool, the
GPU governor, the control socket and the metrics endpoint are the supervisor's, shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from protocol.studio import Capabilities
from supervisor.config import WorkerConfig
from supervisor.lanes.plan import LanePlan
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.lane_pool import LanePool
from supervisor.studio.capabilities import build_capabilities
from supervisor.studio.log_queue import LogShipQueue
from supervisor.worker_state import WorkerState


@dataclass(eq=False)
class Lane:
    plan: LanePlan
    pool: LanePool
    state: WorkerState = field(default_factory=WorkerState)
    logs: LogShipQueue = field(default_factory=LogShipQueue)
    ended: str | None = None  # why its studio loop stopped, once it has
    exit_code: int | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def table(self) -> str | None:
        return self.plan.table

    def capabilities(self, cfg: WorkerConfig) -> Capabilities:
        """What the register request advertises (``cfg``: the lane's view)."""
        return build_capabilities(
            cfg,
            self.pool.models_per_kind(),
            paused=self.state.paused,
            max_concurrent_jobs=self.pool.capacity(),
            vram_gb=self.pool.advertised_gb(cfg.vram_threshold_gb),
            machine_suffix=self.plan.machine_suffix,
        )


def make_lanes(plans: list[LanePlan], pool: EnginePool) -> list[Lane]:
    lanes = [Lane(plan, LanePool(pool, plan.slot_ids)) for plan in plans]
    for lane in lanes:
        pool.add_listener(lane.state.nudge)
    return lanes


def lane_of_job(lanes: list[Lane], job_id: str) -> Lane | None:
    return next((lane for lane in lanes if job_id in lane.state.jobs), None)


def every_state(lanes: list[Lane]) -> Iterator[WorkerState]:
    return (lane.state for lane in lanes)
