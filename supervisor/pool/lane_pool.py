"""One lane's share of the engine pool: the questions a session asks, about its slots only.

A lane's session advertises, routes and reserves on its own slots, while the slots, the
IPC router, the poison list and the GPU ledger stay the pool's: two lanes on one GPU read
the same memory picture, so they never overcommit it. With one lane (the default) the
view covers every slot and answers exactly what the pool does.
"""

from __future__ import annotations

from supervisor.gpu.picture import MemoryPicture
from supervisor.pool.engine_pool import EnginePool, SlotView
from supervisor.pool.policies import PoisonJobs
from supervisor.pool.slot import Slot


class LanePool:
    def __init__(self, pool: EnginePool, slot_ids: frozenset[str] | None = None) -> None:
        self.pool = pool
        # None: every slot (one lane), and slots added later would count too.
        self.only = slot_ids

    @property
    def poison(self) -> PoisonJobs:
        return self.pool.poison

    @property
    def slots(self) -> list[Slot]:
        return [s for s in self.pool.slots if self.only is None or s.slot_id in self.only]

    def views(self) -> list[SlotView]:
        return self.pool.views(self.only)

    def memory(self) -> MemoryPicture:
        return self.pool.memory(self.only)

    def capacity(self) -> int:
        return self.pool.capacity(self.only)

    def models_per_kind(self) -> dict[str, list[str]]:
        return self.pool.models_per_kind(self.only)

    def advertised_gb(self, configured_threshold_gb: float) -> tuple[float, float]:
        return self.pool.gpu.advertised_gb(configured_threshold_gb, self.only)

    def engines_elsewhere(self) -> frozenset[str]:
        """Engines that other lanes of this supervisor serve and this one does not: an offer
        for one is for a sibling lane, not a job to fail."""
        if self.only is None:
            return frozenset()
        mine = {s.engine for s in self.slots}
        return frozenset(s.engine for s in self.pool.slots if s.engine not in mine)

    def reserve(self, slot_id: str, job_id: str, load_key: str = "", need_bytes: int = 0) -> Slot:
        return self.pool.reserve(slot_id, job_id, load_key, need_bytes)

    def release(self, slot: Slot, job_id: str) -> None:
        self.pool.release(slot, job_id)
