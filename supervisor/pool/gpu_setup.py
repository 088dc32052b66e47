"""The GPUs as the pool finds them at start: open the source (NVML, or the simulated devices
of ``STUDIO_WORKER_SIMULATED_GPUS``), read every card once, pin each ``engine@N`` to its
card by UUID, and turn the config into the governor's settings.

Everything here runs once, before any engine host is spawned, so a slot that names a GPU
that is not there stops the start (``DeviceIndexError``: exit 2) instead of a host computing
somewhere else. ``STUDIO_WORKER_GPU_SAMPLE_S`` (seconds, > 0) overrides how often the GPUs
are read (1 s): a testing knob, like the registration poll override.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from engines.simulated_gpu import ALLOC_DIR_ENV, CONFIG_ENV
from supervisor.config import WorkerConfig
from supervisor.errors import UsageError
from supervisor.gpu.facts import GpuDevice, GpuSourceWithXid
from supervisor.gpu.pinning import CUDA_VISIBLE_DEVICES, describe_devices, pin_slots
from supervisor.gpu.slot_contract import MIB, GpuSettings
from supervisor.gpu.sources import open_gpu_source
from supervisor.gpu.vulkan_order import read_vulkan_order
from supervisor.pool.slot_spec import SlotSpec
from supervisor.pool.slot_views import Pin

log = logging.getLogger("supervisor.gpu")

SAMPLE_ENV: Final = "STUDIO_WORKER_GPU_SAMPLE_S"


@dataclass(frozen=True)
class GpuSetup:
    """The GPUs as found at start: the source to keep reading, the devices, the card each
    ``engine@N`` is pinned to, and the governance settings."""

    source: GpuSourceWithXid | None = None
    devices: tuple[GpuDevice, ...] = ()
    pins: Mapping[int, Pin] = field(default_factory=dict)
    settings: GpuSettings = field(default_factory=GpuSettings)


def gpu_settings(cfg: WorkerConfig, environ: Mapping[str, str]) -> GpuSettings:
    raw = environ.get(SAMPLE_ENV, "").strip()
    sample_s = 1.0
    if raw:
        try:
            sample_s = float(raw)
        except ValueError:
            sample_s = math.nan
        if not math.isfinite(sample_s) or sample_s <= 0:
            raise UsageError(f"{SAMPLE_ENV} must be a number of seconds > 0, got {raw!r}")
    return GpuSettings(
        governed=cfg.gpu_governance,
        headroom_bytes=cfg.vram_headroom_mb * MIB,
        max_warm_models=cfg.max_warm_models,
        keep_alive_s=cfg.model_keep_alive_s,
        unload_timeout_s=cfg.vram_unload_timeout_s,
        sample_interval_s=sample_s,
        load_timeout_s=cfg.heartbeat_timeout_loading_s,
    )


@contextlib.contextmanager
def prepared_gpus(
    specs: Sequence[SlotSpec], cfg: WorkerConfig, environ: Mapping[str, str]
) -> Iterator[GpuSetup]:
    """The GPU setup for these slots; the source is closed (and a simulation's allocation
    directory removed) on the way out. Raises ``GpuError`` (``DeviceIndexError`` among them)
    and ``UsageError`` before anything is spawned."""
    settings = gpu_settings(cfg, environ)
    env = dict(environ)
    simulated = bool(env.get(CONFIG_ENV))
    alloc_dir: Path | None = None
    if simulated and not env.get(ALLOC_DIR_ENV):
        # Hosts write what they allocate beside each other, where the source reads it.
        alloc_dir = Path(tempfile.mkdtemp(prefix="studio-worker-simgpu-"))
        env[ALLOC_DIR_ENV] = str(alloc_dir)
    source = open_gpu_source(env)
    try:
        devices = tuple(source.read()) if source is not None else ()
        pins = _pins(specs, devices, env, simulated) if source is not None else {}
        if source is None:
            log.info("no NVIDIA GPU found; advertising vram=0")
        else:
            log.info("%s (%s)", describe_devices(devices), source.kind)
        yield GpuSetup(source, devices, pins, settings)
    finally:
        if source is not None:
            source.close()
        if alloc_dir is not None:
            shutil.rmtree(alloc_dir, ignore_errors=True)


def _pins(
    specs: Sequence[SlotSpec], devices: Sequence[GpuDevice], env: Mapping[str, str], sim: bool
) -> dict[int, Pin]:
    slots = [(s.engine, s.gpu) for s in specs if s.gpu is not None]
    if not slots:
        return {}
    vulkan = None if sim else read_vulkan_order()
    host_pins = pin_slots(
        devices, slots, inherited=env.get(CUDA_VISIBLE_DEVICES), vulkan_order=vulkan
    )
    pins: dict[int, Pin] = {}
    for gpu, pin in host_pins.items():
        pin_env = dict(pin.env)
        if sim:
            pin_env[CONFIG_ENV] = env[CONFIG_ENV]
            pin_env[ALLOC_DIR_ENV] = env[ALLOC_DIR_ENV]
        if pin.vulkan_note:
            log.info("gpu %d: GGML_VK_VISIBLE_DEVICES left unset: %s", gpu, pin.vulkan_note)
        log.info(
            "engine@%d runs on gpu %d: %s %s (%.1f GiB)",
            gpu,
            pin.device.index,
            pin.device.name,
            pin.device.uuid,
            pin.device.total_bytes / 2**30,
        )
        pins[gpu] = Pin(pin.device, tuple(sorted(pin_env.items())), simulated=sim)
    return pins
