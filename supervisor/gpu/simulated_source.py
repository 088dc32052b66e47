"""Simulated cards for CI: a ``GpuSource`` over the files ``engines.simulated_gpu`` defines
(the devices' JSON named by ``STUDIO_WORKER_SIMULATED_GPUS``, and one allocation file per
live host in ``STUDIO_WORKER_SIM_GPU_DIR``). Both are re-read at every sample, so a test
changes the world by writing files and starting or killing processes, never by calling into
the supervisor. A device's used memory is its ``foreign_mib`` plus what live hosts on it
have allocated; ``per_process: false`` hides the per-process split as a container does. It
must not compute any figure itself beyond that sum, and never reports XID events.
"""

from __future__ import annotations

from pathlib import Path

from engines.simulated_gpu import (
    MIB,
    HostAllocations,
    SimDevice,
    SimulatedGpuError,
    live_allocations,
    read_config,
    used_bytes,
)
from supervisor.gpu.facts import GpuDevice, GpuReadError, XidEvent

SIMULATED_DRIVER = "simulated"


def simulated_device(device: SimDevice, hosts: list[HostAllocations]) -> GpuDevice:
    """One simulated card as NVML would report it, given the live hosts' allocations."""
    uuid = device.device_uuid
    processes: dict[int, int] | None = None
    if device.per_process:
        processes = {h.pid: h.total_bytes for h in hosts if h.device_uuid == uuid}
    return GpuDevice(
        index=device.index,
        name=device.name,
        uuid=uuid,
        total_bytes=device.total_mib * MIB,
        used_bytes=used_bytes(device, hosts),
        driver=SIMULATED_DRIVER,
        processes=processes,
    )


class SimulatedGpuSource:
    """A ``GpuSourceWithXid`` over the simulation files. Made by ``open_gpu_source``."""

    def __init__(self, config_path: Path, alloc_dir: Path) -> None:
        self.config_path = config_path
        self.alloc_dir = alloc_dir

    @property
    def kind(self) -> str:
        return "simulated"

    def read(self) -> list[GpuDevice]:
        try:
            config = read_config(self.config_path)
        except SimulatedGpuError as exc:
            raise GpuReadError(str(exc)) from None
        hosts = live_allocations(self.alloc_dir)
        return [simulated_device(d, hosts) for d in sorted(config.devices, key=lambda d: d.index)]

    def poll_xid_events(self) -> list[XidEvent]:
        return []  # a simulated card faults through ``healthy: false``, probed by the governor

    def close(self) -> None:
        pass  # nothing held between samples
