"""Which GPU source the supervisor reads, chosen once at start from its environment:
simulated cards when ``STUDIO_WORKER_SIMULATED_GPUS`` names a file (CI, tests), else NVML
when it initialises and finds a card, else none (no NVIDIA GPU: an AMD card, a CPU-only
machine). It only chooses and opens; it never samples on a schedule or interprets a reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from engines.simulated_gpu import ALLOC_DIR_ENV, CONFIG_ENV
from supervisor.gpu.facts import GpuReadError, GpuSourceWithXid
from supervisor.gpu.nvml_source import open_nvml
from supervisor.gpu.simulated_source import SimulatedGpuSource


def open_gpu_source(environ: Mapping[str, str]) -> GpuSourceWithXid | None:
    """The source for this supervisor (the caller closes it), or None without NVIDIA GPUs.

    Raises ``GpuReadError`` when simulated cards are asked for and their file does not read,
    or the allocation directory (``STUDIO_WORKER_SIM_GPU_DIR``, where the hosts write what
    they hold) is not set: a broken simulation fails at start, not at the first sample."""
    config = environ.get(CONFIG_ENV, "")
    if not config:
        return open_nvml()
    alloc_dir = environ.get(ALLOC_DIR_ENV, "")
    if not alloc_dir:
        raise GpuReadError(
            f"{CONFIG_ENV} is set but {ALLOC_DIR_ENV} is not: set it to the directory where "
            "the engine hosts write their simulated allocations"
        )
    source = SimulatedGpuSource(Path(config), Path(alloc_dir))
    source.read()
    return source
