"""Whether a GPU may take work: healthy, suspect after a fault, or being probed.

A device becomes ``suspect`` when a host on it dies by a native fault other than running
out of memory, reports a device error, or NVML reports an XID error. A suspect device's
slots take no offers until a probe passes: NVML still answers for it, and a fresh host of
that engine initialises its GPU backend there and allocates and frees a small buffer. The
table is the project's one state-machine idiom (``protocol.state_machine``); the reason of
the last fault is kept for ``status`` and the metrics.
"""

from __future__ import annotations

import enum
from typing import Final

from protocol.state_machine import StateMachine


class GpuHealth(enum.StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    PROBING = "probing"


class HealthEvent(enum.Enum):
    FAULT = "fault"
    PROBE_SENT = "probe_sent"
    PROBE_PASSED = "probe_passed"
    PROBE_FAILED = "probe_failed"


H, V = GpuHealth, HealthEvent

TRANSITIONS: Final[dict[tuple[GpuHealth, HealthEvent], GpuHealth]] = {
    (H.HEALTHY, V.FAULT): H.SUSPECT,
    (H.SUSPECT, V.FAULT): H.SUSPECT,
    (H.SUSPECT, V.PROBE_SENT): H.PROBING,
    (H.PROBING, V.FAULT): H.SUSPECT,
    (H.PROBING, V.PROBE_PASSED): H.HEALTHY,
    (H.PROBING, V.PROBE_FAILED): H.SUSPECT,
}
INITIAL: Final = GpuHealth.HEALTHY


class DeviceHealth:
    """One device's health and why it is not healthy."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.machine: StateMachine[GpuHealth, HealthEvent] = StateMachine(
            f"gpu {index}", TRANSITIONS, INITIAL
        )
        self.reason = ""
        self.probing_slot: str | None = None

    @property
    def state(self) -> GpuHealth:
        return self.machine.state

    @property
    def takes_work(self) -> bool:
        return self.state is GpuHealth.HEALTHY

    def fault(self, reason: str) -> bool:
        """Record a fault; True when the device was healthy until now."""
        was_healthy = self.state is GpuHealth.HEALTHY
        self.machine.apply(HealthEvent.FAULT)
        self.reason = reason
        self.probing_slot = None
        return was_healthy

    def probe_sent(self, slot_id: str) -> None:
        self.machine.apply(HealthEvent.PROBE_SENT)
        self.probing_slot = slot_id

    def probe_result(self, ok: bool, detail: str) -> None:
        self.machine.apply(HealthEvent.PROBE_PASSED if ok else HealthEvent.PROBE_FAILED)
        self.probing_slot = None
        self.reason = "" if ok else f"probe failed: {detail}"

    def describe(self) -> str:
        if self.state is GpuHealth.HEALTHY:
            return "healthy"
        return f"{self.state.value} ({self.reason})"
