"""The synthetic engine on a simulated GPU: model memory that behaves like a real engine's.

When ``STUDIO_WORKER_SIMULATED_GPUS`` is set and ``CUDA_VISIBLE_DEVICES`` names one of its
devices by UUID (the supervisor pins hosts that way), a synthetic job "loads its model": the
load key of the job (``synthetic:<model>``) becomes an allocation of ``vram_estimate_bytes``
in this host's file of the shared format (``engines.simulated_gpu``), asked for through
``before_load`` first and kept resident like a real model, up to ``max_warm_models`` with
the least recently used unloaded first. Generating adds a transient allocation (5 % of the
model, at least 256 MiB) that goes when the job ends. An allocation that does not fit the
device (``foreign_mib`` plus every live host's allocations, read now) fails with ggml's
CUDA out-of-memory text, so the host reports ``vram_oom`` exactly as for a real engine.
Allocation checks hold a lock file in the allocation directory, so two hosts never both
take the last free MiB. The ``synthetic-oom`` and ``synthetic-nofree`` faults act here; the
``backend-cpu`` and ``wrong-device`` options change what ``compute_device`` reports. It
knows nothing of IPC, and outside a simulated GPU none of it exists (``from_environment``
gives None).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from engines.base import JobContext
from engines.errors import EngineError
from engines.faults import FaultModel, FaultOptions, job_fault
from engines.file_lock import exclusive_lock
from engines.simulated_gpu import (
    ALLOC_DIR_ENV,
    CONFIG_ENV,
    MIB,
    HostAllocations,
    SimDevice,
    SimulatedGpuError,
    device_for_uuid,
    live_allocations,
    read_config,
    used_bytes,
    write_allocations,
)
from engines.warm_models import WarmModels
from protocol.ipc import ComputeDevice, ResidentModel

VISIBLE_DEVICES_ENV: Final = "CUDA_VISIBLE_DEVICES"
TRANSIENT_FRACTION: Final = 0.05
MIN_TRANSIENT_BYTES: Final = 256 * MIB
_LOCK_FILE: Final = ".allocate.lock"  # not *.json: readers of the directory skip it
_PROBE_ALLOCATION: Final = "probe"


def oom_text(nbytes: int) -> str:
    """What ggml's CUDA backend prints when a device buffer does not fit."""
    return (
        f"ggml_backend_cuda_buffer_type_alloc_buffer: allocating {nbytes / MIB:.2f} MiB on "
        "device 0: cudaMalloc failed: out of memory"
    )


def transient_bytes(model_bytes: int) -> int:
    """The working memory of one generation on a model of ``model_bytes``."""
    return max(int(model_bytes * TRANSIENT_FRACTION), MIN_TRANSIENT_BYTES)


def raise_oom_fault(ctx: JobContext, nbytes: int, faults: FaultOptions) -> None:
    """``synthetic-oom``: generation runs out of GPU memory (after the model load)."""
    if job_fault(ctx.model, faults) is FaultModel.OOM:
        raise EngineError(oom_text(nbytes))


class SimulatedGpu:
    """This host's memory on its simulated device, mirrored to ``<dir>/<pid>.json``."""

    def __init__(
        self, config_path: Path, alloc_dir: Path, device: SimDevice, faults: FaultOptions
    ) -> None:
        self.config_path = config_path
        self.alloc_dir = alloc_dir
        self.device = device
        self.faults = faults
        self._record = HostAllocations(os.getpid(), device.device_uuid)
        self._models: WarmModels[int] = WarmModels(self._free_model)
        self._leak_next_unload = False
        self._write()  # the supervisor sees this host on its device from the start

    @classmethod
    def from_environment(
        cls, faults: FaultOptions, environ: Mapping[str, str] = os.environ
    ) -> SimulatedGpu | None:
        """The simulated GPU this host is pinned to, or None when it is on no simulated GPU.

        Raises ``SimulatedGpuError`` for a pin to a simulated device without an allocation
        directory, or an unreadable simulation file: a host must not run on a GPU it
        cannot account for.
        """
        config_env = environ.get(CONFIG_ENV, "")
        visible = environ.get(VISIBLE_DEVICES_ENV, "").strip()
        if not config_env or not visible or "," in visible:
            return None
        config_path = Path(config_env)
        device = device_for_uuid(read_config(config_path), visible)
        if device is None:
            return None
        alloc_dir = environ.get(ALLOC_DIR_ENV, "")
        if not alloc_dir:
            raise SimulatedGpuError(f"{ALLOC_DIR_ENV} must be set on a simulated GPU")
        return cls(config_path, Path(alloc_dir), device, faults)

    # --- what the host reports ---------------------------------------------------------------

    def compute_device(self) -> ComputeDevice:
        if self.faults.backend_cpu:
            return ComputeDevice("cpu")
        uuid = self.device.device_uuid
        if self.faults.wrong_device:
            made_up = hashlib.sha256(uuid.encode()).hexdigest()
            uuid = f"GPU-{made_up[:8]}-{made_up[8:12]}-4{made_up[13:16]}-8{made_up[17:20]}-"
            uuid += made_up[20:32]
        return ComputeDevice("simulated", self.device.name, uuid)

    def resident(self) -> list[ResidentModel]:
        return self._models.resident()

    @property
    def allocations(self) -> dict[str, int]:
        """What this host holds on the device now, by allocation name (a copy)."""
        return dict(self._record.allocations)

    # --- a job -------------------------------------------------------------------------------

    def load(self, ctx: JobContext, max_warm_models: int) -> bool:
        """Make the job's model resident; True when it had to be loaded."""
        key = ctx.key_for("synthetic")
        if self._models.use(key) is not None:
            return False
        self._models.make_room(max_warm_models)
        size = max(0, ctx.vram_estimate_bytes)
        ctx.before_load(size)
        if ctx.cancelled.is_set():
            raise EngineError("cancelled")
        ctx.progress("loading", 0, 1, key)
        self._allocate(key, size)
        self._models.add(key, size, size)
        ctx.progress("loading", 1, 1, key)
        return True

    @contextlib.contextmanager
    def generating(self, ctx: JobContext) -> Iterator[None]:
        """Hold the job's working memory while it generates; the faults strike here."""
        model_bytes = max(0, ctx.vram_estimate_bytes)
        name = f"transient:{ctx.job_id}"
        self._allocate(name, transient_bytes(model_bytes))
        try:
            raise_oom_fault(ctx, transient_bytes(model_bytes), self.faults)
            yield
            if job_fault(ctx.model, self.faults) is FaultModel.NOFREE:
                self._leak_next_unload = True
        finally:
            self._release(name)

    # --- between jobs ------------------------------------------------------------------------

    def unload(self, load_key: str) -> bool:
        return self._models.discard(load_key)

    def probe(self, nbytes: int) -> str:
        """Fail as a faulting GPU does when the device is marked unhealthy (re-read now);
        else allocate and free ``nbytes`` in the file."""
        device = self._device_now()
        if not device.healthy:
            raise EngineError(
                f"CUDA error: unspecified launch failure (simulated GPU {device.name} "
                f"{device.device_uuid} is marked unhealthy)"
            )
        self._allocate(_PROBE_ALLOCATION, nbytes)
        self._release(_PROBE_ALLOCATION)
        return f"simulated {device.name}: allocated and freed {nbytes / MIB:.2f} MiB"

    def close(self) -> None:
        """The process is leaving: its memory is free again (as a real driver frees it)."""
        self._record.allocations.clear()
        (self.alloc_dir / f"{self._record.pid}.json").unlink(missing_ok=True)

    # --- the allocation file -----------------------------------------------------------------

    def _device_now(self) -> SimDevice:
        try:
            device = device_for_uuid(read_config(self.config_path), self.device.device_uuid)
        except SimulatedGpuError as exc:
            raise EngineError(str(exc)) from exc
        if device is None:
            raise EngineError(f"simulated GPU {self.device.device_uuid} left {self.config_path}")
        return device

    def _allocate(self, name: str, nbytes: int) -> None:
        with exclusive_lock(self.alloc_dir / _LOCK_FILE):
            device = self._device_now()
            used = used_bytes(device, live_allocations(self.alloc_dir))
            if used + nbytes > device.total_mib * MIB:
                raise EngineError(oom_text(nbytes))
            allocations = self._record.allocations
            allocations[name] = allocations.get(name, 0) + nbytes
            self._write()

    def _release(self, name: str) -> None:
        if self._record.allocations.pop(name, None) is not None:
            self._write()

    def _free_model(self, key: str, size: int) -> None:
        if not self._leak_next_unload:
            self._release(key)
            return
        # synthetic-nofree: the model leaves resident() but its memory stays taken.
        self._leak_next_unload = False
        allocations = self._record.allocations
        leaked = allocations.pop(key, size)
        allocations[f"leaked:{key}"] = allocations.get(f"leaked:{key}", 0) + leaked
        self._write()

    def _write(self) -> None:
        write_allocations(self.alloc_dir, self._record)
