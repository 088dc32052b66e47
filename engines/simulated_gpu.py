"""Simulated GPUs: the file formats both sides share, so GPU memory logic runs in CI.

``STUDIO_WORKER_SIMULATED_GPUS=<path>`` names a JSON file of devices::

    {"devices": [{"index": 0, "name": "Sim 24G", "total_mib": 24576, "foreign_mib": 0,
                  "uuid": "GPU-…" (optional), "per_process": true (optional)}]}

It is re-read at every sample, so a test can change ``foreign_mib`` (memory some other
process holds) while the worker runs. The memory a simulated device reports is never a
figure the worker computes for itself: each engine host writes what it has allocated to its
own file, ``<STUDIO_WORKER_SIM_GPU_DIR>/<pid>.json``, and a device's used memory is
``foreign_mib`` plus the allocations of the hosts that are still alive (a killed process
frees its VRAM). ``per_process: false`` hides the per-process figures, as a container does
(the driver reports host PIDs there, so none match). ``healthy: false`` makes the device
fail a health probe, so tests can hold a suspect GPU suspect.

Used by the supervisor's simulated NVML (``supervisor.gpu.simulated_source``) and by engine hosts
on a simulated device (the synthetic engine). Pure data and small file I/O: no inference
library, no supervisor import.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

import msgspec
import psutil

CONFIG_ENV: Final = "STUDIO_WORKER_SIMULATED_GPUS"
ALLOC_DIR_ENV: Final = "STUDIO_WORKER_SIM_GPU_DIR"
MIB: Final = 2**20
# psutil's process start times are good to about a second (the boot time it adds is in whole
# seconds), so a start this much later than the file's last write still counts as before it.
START_TIME_SLACK_S: Final = 2.0


class SimDevice(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    name: str
    total_mib: int
    foreign_mib: int = 0
    uuid: str = ""
    per_process: bool = True
    healthy: bool = True  # false: the device faults (a probe fails), until set back to true

    @property
    def device_uuid(self) -> str:
        """The given UUID, or a stable one made from the index."""
        return self.uuid or f"GPU-00000000-0000-4000-8000-{self.index:012d}"


class SimConfig(msgspec.Struct, forbid_unknown_fields=True):
    devices: list[SimDevice]


class HostAllocations(msgspec.Struct, forbid_unknown_fields=True):
    """What one host process holds on its device, by name (a model, a transient buffer)."""

    pid: int
    device_uuid: str
    allocations: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(self.allocations.values())


class SimulatedGpuError(ValueError):
    """The simulation's JSON file is missing or malformed."""


_config_decoder: Final = msgspec.json.Decoder(SimConfig)
_alloc_decoder: Final = msgspec.json.Decoder(HostAllocations)


def read_config(path: Path) -> SimConfig:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SimulatedGpuError(f"cannot read {CONFIG_ENV} file {path}: {exc.strerror}") from None
    try:
        config = _config_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SimulatedGpuError(f"{CONFIG_ENV} file {path} is not valid: {exc}") from None
    indices = [d.index for d in config.devices]
    if sorted(indices) != list(range(len(indices))):
        raise SimulatedGpuError(f"{CONFIG_ENV} file {path}: indices must be 0..N-1")
    uuids = [d.device_uuid for d in config.devices]
    if len(set(uuids)) != len(uuids):
        # Allocations name their device by UUID: two devices sharing one would both count them.
        raise SimulatedGpuError(f"{CONFIG_ENV} file {path}: device UUIDs must be unique")
    for d in config.devices:
        if d.total_mib <= 0 or d.foreign_mib < 0:
            raise SimulatedGpuError(
                f"{CONFIG_ENV} file {path}: device {d.index} needs total_mib > 0 and "
                f"foreign_mib >= 0 (got {d.total_mib} and {d.foreign_mib})"
            )
    return config


def _alive(pid: int, written_at: float) -> bool:
    """Whether the host that last wrote its file at ``written_at`` (epoch seconds) is still
    running: not gone, not a zombie (its memory is freed at exit, before the reaping), and
    not a newer process that was given the dead host's pid."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= written_at + START_TIME_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; a process we may not inspect is taken at its word


def live_allocations(alloc_dir: Path) -> list[HostAllocations]:
    """The allocation files of hosts still alive; a dead host's memory is free again."""
    found: list[HostAllocations] = []
    try:
        entries = list(alloc_dir.glob("*.json"))
    except OSError:
        return found
    for path in entries:
        try:
            written_at = path.stat().st_mtime
            record = _alloc_decoder.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError):
            continue  # being replaced right now, or gone: the next sample sees it
        if _alive(record.pid, written_at):
            found.append(record)
    return found


def used_bytes(device: SimDevice, hosts: list[HostAllocations]) -> int:
    uuid = device.device_uuid
    return device.foreign_mib * MIB + sum(h.total_bytes for h in hosts if h.device_uuid == uuid)


def write_allocations(alloc_dir: Path, record: HostAllocations) -> None:
    """Replace this host's file atomically (a reader never sees half of it)."""
    alloc_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=alloc_dir, prefix=f".{record.pid}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(msgspec.json.encode(record))
        Path(tmp).replace(alloc_dir / f"{record.pid}.json")
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()


def device_for_uuid(config: SimConfig, uuid: str) -> SimDevice | None:
    for device in config.devices:
        if device.device_uuid == uuid:
            return device
    return None
