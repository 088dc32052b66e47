"""The GPU memory picture routing reads: every slot's room on its GPU and every GPU's room,
taken in one step from the ledger, the last NVML reading and the health of each device.

Plain data built from the governor's state; ``supervisor.studio.offer_routing`` hands it to
``admission.admit`` together with the claim. Building it does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from supervisor.gpu.admission import DeviceRoom, SlotRoom, need_bytes


@dataclass(frozen=True)
class MemoryPicture:
    """What admission needs: rooms, the known cost of load keys, and the settings."""

    governed: bool
    slots: tuple[SlotRoom, ...]
    devices: Mapping[int, DeviceRoom]
    peaks: Mapping[str, int] = field(default_factory=dict)  # load key -> measured peak bytes
    headroom_bytes: int = 0
    max_warm_models: int = 1

    def need(self, load_key: str, estimate_bytes: int) -> int:
        """``max(estimate, measured peak of the load key if known) + headroom``."""
        return need_bytes(estimate_bytes, self.peaks.get(load_key, 0), self.headroom_bytes)


UNGOVERNED = MemoryPicture(governed=False, slots=(), devices={})
