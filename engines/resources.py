"""Resource readings of the host process for its heartbeats: RSS always, VRAM where an
NVIDIA driver can say. ``nvidia-smi`` is costly, so VRAM is read at most every few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Final

import psutil

VRAM_PROBE_INTERVAL_S: Final = 5.0


class ResourceProbe:
    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._smi = shutil.which("nvidia-smi")
        self._vram: int | None = None
        self._vram_at = 0.0

    def rss_bytes(self) -> int:
        return int(self._proc.memory_info().rss)

    def vram_bytes(self, max_age_s: float = VRAM_PROBE_INTERVAL_S) -> int | None:
        """This process's VRAM, from a reading at most ``max_age_s`` old (0: read now)."""
        if self._smi is None:
            return None
        now = time.monotonic()
        if now - self._vram_at >= max_age_s:
            self._vram_at = now
            self._vram = self._query_vram()
        return self._vram

    def _query_vram(self) -> int | None:
        assert self._smi is not None
        try:
            out = subprocess.run(
                [
                    self._smi,
                    "--query-compute-apps=pid,used_memory",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        pid = str(os.getpid())
        total_mib = 0
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0] == pid and parts[1].isdigit():
                total_mib += int(parts[1])
        return total_mib * 1024 * 1024
