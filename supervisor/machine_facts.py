"""Facts about this machine for the capabilities: host name, user, total VRAM (§5, §9.6).

VRAM: sum the ``Video Memory`` lines of ``/proc/driver/nvidia/gpus/*/information``; if
none parse, sum ``nvidia-smi --query-gpu=memory.total`` (``[N/A]`` lines skipped and
counted); else 0. Probed once per process: capabilities are rebuilt every 5 s.
"""

from __future__ import annotations

import functools
import getpass
import logging
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Final

log = logging.getLogger("supervisor.host_facts")

NVIDIA_PROC_DIR: Final = Path("/proc/driver/nvidia/gpus")
_VIDEO_MEMORY = re.compile(r"^\s*Video Memory:\s*([0-9.]+)\s*([A-Za-z]*)", re.MULTILINE)
_UNIT_TO_MIB: Final = {"": 1.0, "mib": 1.0, "mb": 1.0, "gib": 1024.0, "gb": 1024.0}


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


def sysfs_vram_mib(gpu_dir: Path = NVIDIA_PROC_DIR) -> float | None:
    """Summed MiB from the NVIDIA proc files, None when nothing parses."""
    if not gpu_dir.is_dir():
        return None
    total = 0.0
    found = False
    for info in sorted(gpu_dir.glob("*/information")):
        try:
            text = info.read_text()
        except OSError:
            log.warning("unreadable GPU information file %s dropped", info)
            continue
        match = _VIDEO_MEMORY.search(text)
        if match is None:
            continue
        factor = _UNIT_TO_MIB.get(match.group(2).lower(), 1.0)
        try:
            total += float(match.group(1)) * factor
        except ValueError:
            log.warning("unparseable Video Memory line in %s dropped", info)
            continue
        found = True
    return total if found else None


def parse_nvidia_smi_mib(output: str) -> tuple[float, int]:
    """(summed MiB, number of ``[N/A]`` or unparseable lines dropped)."""
    total, dropped = 0.0, 0
    for line in output.replace("\r", "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            total += float(line.split()[0])
        except (ValueError, IndexError):
            dropped += 1
    return total, dropped


def nvidia_smi_vram_mib() -> float | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return None
    total, dropped = parse_nvidia_smi_mib(out)
    if dropped:
        log.warning(
            "nvidia-smi reported %d GPU(s) without memory.total; dropped=%d", dropped, dropped
        )
    return total or None


@functools.cache
def total_vram_gb() -> float:
    mib = sysfs_vram_mib()
    source = "nvidia_sysfs"
    if mib is None:
        mib = nvidia_smi_vram_mib()
        source = "nvidia_smi"
    if mib is None:
        log.info("no NVIDIA GPU found; advertising vram=0")
        return 0.0
    log.info("detected %.1f GiB of VRAM source=%s", mib / 1024, source)
    return round(mib / 1024, 2)
