"""Resource readings of the host process for its heartbeats: its RSS. A host does not read
its VRAM: the supervisor reads every card once through NVML and knows each process's share
where the driver's pids are ours (``supervisor.gpu.nvml_source``), so the heartbeat's
``vram_bytes`` is None. Nothing here runs a tool or talks to a driver.
"""

from __future__ import annotations

from typing import Final

import psutil

# Kept while ``engines.host`` still runs its VRAM sampling thread; that thread only ever
# reads None now, and goes with ``ResourceProbe.vram_bytes``.
VRAM_PROBE_INTERVAL_S: Final = 5.0


class ResourceProbe:
    def __init__(self) -> None:
        self._proc = psutil.Process()

    def rss_bytes(self) -> int:
        return int(self._proc.memory_info().rss)

    def vram_bytes(self, max_age_s: float = VRAM_PROBE_INTERVAL_S) -> int | None:
        """Always None: the supervisor, not the host, reads VRAM (see the module docstring).
        ``max_age_s`` is ignored; the signature stays until ``engines.host`` stops calling."""
        return None
