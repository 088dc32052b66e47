"""What the GPU governor and an engine slot agree on: the governance settings, what the
governor needs of a slot (``GovernedSlot``, implemented by ``supervisor.pool.slot.Slot``)
and why it may ask for a host to be replaced. Types only, so every module of the package
(and the pool) can name them without importing the governor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from protocol import ipc

MIB: Final = 2**20


@dataclass(frozen=True)
class GpuSettings:
    governed: bool = True  # config ``gpu_governance``
    headroom_bytes: int = 1024 * MIB  # config ``vram_headroom_mb``
    max_warm_models: int = 1
    keep_alive_s: float = 0.0  # 0: never unload for idleness
    unload_timeout_s: float = 20.0
    sample_interval_s: float = 1.0
    load_timeout_s: float = 300.0
    probe_bytes: int = 64 * MIB


class RecycleCause(enum.StrEnum):
    """Why the governor wants a slot's host replaced (the slot's loss cause of that name)."""

    UNLOAD_STUCK = "unload_stuck"  # told to unload, freed nothing in time
    PROBE_FAILED = "probe_failed"  # its GPU probe failed
    GPU_SUSPECT = "gpu_suspect"  # its card faulted: a fresh host must probe it


class GovernedSlot(Protocol):
    """What the governor needs of one engine slot (``supervisor.pool.slot.Slot``)."""

    @property
    def slot_id(self) -> str: ...
    @property
    def engine(self) -> str: ...
    @property
    def device_index(self) -> int | None: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def generation(self) -> int:
        """Which host of the slot this is (a request about an older one is stale)."""
        ...

    @property
    def is_free(self) -> bool: ...
    @property
    def is_idle(self) -> bool: ...
    async def send(self, msg: ipc.SupervisorMessage) -> bool: ...
    def recycle(self, cause: RecycleCause, detail: str, generation: int) -> None: ...
