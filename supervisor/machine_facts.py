"""Facts about this machine for the capabilities: host name, user, total VRAM (§5, §9.6).

VRAM is the sum of the cards' totals as the GPU source reads them (NVML, or the simulated
cards in CI; ``supervisor.gpu.sources``), 0 without NVIDIA GPUs. Read once per process:
capabilities are rebuilt every 5 s and a card's total does not change. Nothing here parses
a tool's output.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import socket
from collections.abc import Iterable

from supervisor.gpu.facts import GpuDevice, GpuReadError
from supervisor.gpu.sources import open_gpu_source

log = logging.getLogger("supervisor.host_facts")


def machine_name() -> str:
    try:
        return socket.gethostname() or "unknown-host"
    except OSError:
        return "unknown-host"


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        log.warning("could not determine the OS user; reporting unknown-user")
        return "unknown-user"


def sum_vram_gb(devices: Iterable[GpuDevice]) -> float:
    """The advertised ``vramTotalGb``: every card's total, in GiB, to two decimals."""
    return round(sum(d.total_bytes for d in devices) / 2**30, 2)


@functools.cache
def total_vram_gb() -> float:
    """``sum_vram_gb`` of the cards this supervisor's environment names, read once."""
    try:
        source = open_gpu_source(os.environ)
        if source is None:
            log.info("no NVIDIA GPU found; advertising vram=0")
            return 0.0
        try:
            devices = source.read()
        finally:
            source.close()
    except GpuReadError as exc:
        log.warning("could not read the GPUs (%s); advertising vram=0", exc)
        return 0.0
    total = sum_vram_gb(devices)
    log.info("detected %.1f GiB of VRAM on %d GPU(s) source=%s", total, len(devices), source.kind)
    return total
