"""The levels a host's leak is measured against, and whether to recycle it after a job.

Pure: the slot core hands it each heartbeat and each job's end. The reference is what the
host used right after its last model load (RSS from its heartbeat, GPU memory beyond its
models from NVML), so loading a bigger model is never mistaken for a leak; the rule itself
is ``policies.recycle_reason``.
"""

from __future__ import annotations

from protocol import ipc
from supervisor.pool.policies import RecycleLimits, recycle_reason


class LeakWatch:
    def __init__(self, limits: RecycleLimits) -> None:
        self._limits = limits
        self._baseline: tuple[int, int | None] | None = None  # (RSS, VRAM) after the last load
        self._loads = -1

    def reset(self) -> None:
        """A new host generation: nothing measured yet."""
        self._baseline = None
        self._loads = -1

    def heartbeat(self, hb: ipc.HostHeartbeat, vram_bytes: int | None) -> None:
        if hb.state == "idle" and hb.model_loads != self._loads:
            # Levels right after a (re)load are the reference a leak is measured against.
            self._loads = hb.model_loads
            self._baseline = (hb.rss_bytes, vram_bytes)

    def after_job(
        self, hb: ipc.HostHeartbeat | None, job_id: str, vram_bytes: int | None
    ) -> str | None:
        """Why the host should be recycled now that ``job_id`` ended (``hb``: the beat the
        host sends right before each result), or None."""
        if hb is None:
            return None
        base = self._baseline
        return recycle_reason(
            self._limits,
            hb.jobs_done + 1 if hb.job_id == job_id else hb.jobs_done,
            base[0] if base else None,
            hb.rss_bytes,
            base[1] if base else None,
            vram_bytes,
        )
