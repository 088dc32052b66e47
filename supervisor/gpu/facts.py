"""What the supervisor reads of the GPUs: one ``GpuDevice`` per card, from NVML or from the
simulated devices (``STUDIO_WORKER_SIMULATED_GPUS``). Plain data; the sources fill it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

# The errors live in the supervisor's one error tree; re-exported so GPU code has one import.
from supervisor.errors import DeviceIndexError, GpuError, GpuReadError

__all__ = [
    "DeviceIndexError",
    "GpuDevice",
    "GpuError",
    "GpuReadError",
    "GpuSource",
    "GpuSourceWithXid",
    "XidEvent",
]


@dataclass(frozen=True)
class GpuDevice:
    """One card as read at one moment. ``index`` is NVML's (PCI bus order), which is what
    ``engine@N`` means once an inherited ``CUDA_VISIBLE_DEVICES`` is taken into account."""

    index: int
    name: str
    uuid: str  # "GPU-…", as NVML and CUDA_VISIBLE_DEVICES spell it
    total_bytes: int
    used_bytes: int
    driver: str = ""
    # pid -> bytes used by that process on this card; None where the driver's pids cannot
    # be matched to ours (containers report host pids) or the source cannot tell.
    processes: dict[int, int] | None = field(default=None)

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class GpuSource(Protocol):
    """Reads every card now. Sources are cheap to call every second from a worker thread
    (NVML calls block), never from the event loop itself."""

    @property
    def kind(self) -> str:
        """``nvml`` or ``simulated``: for the start-up log and ``status``."""
        ...

    def read(self) -> list[GpuDevice]:
        """Every card, by index; raises ``GpuReadError`` when the source fails."""
        ...

    def close(self) -> None: ...


class XidEvent(NamedTuple):
    """A critical error NVML reported on a card (an XID: the driver's error code)."""

    device_index: int
    xid: int


class GpuSourceWithXid(GpuSource, Protocol):
    """A source that can also say whether a card reported a critical error since it was last
    asked. Both sources are one (the simulated one never reports any); ``GpuSource`` alone
    stays enough for code that only reads memory."""

    def poll_xid_events(self) -> list[XidEvent]:
        """The XID events queued since the last call, without waiting; empty where the cards
        or the platform cannot report them. Raises ``GpuReadError`` when NVML fails."""
        ...
