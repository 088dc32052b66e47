"""Why an engine host generation ended: a typed cause, the words for the operator, and
what the cause means for the crash-loop guard.

Causes are a ``StrEnum`` so they read as their value in logs, in ``supervisor status`` and
as the ``cause`` label of ``studio_worker_engine_restarts_total``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class LossCause(enum.StrEnum):
    EXIT = "exit"  # the process exited on its own
    SIGNAL = "signal"  # killed by a signal we did not send
    HANG = "hang"  # no heartbeat within the per-state limit
    DEADLINE = "deadline"  # the job ran past its deadline
    STALL = "stall"  # heartbeats but no progress
    DOWNLOAD_STALL = "download_stall"  # downloading, but no bytes for download_stall_s
    DOWNLOAD_DEADLINE = "download_deadline"  # downloading for longer than download_deadline_s
    READY_TIMEOUT = "ready_timeout"  # no ``Ready`` in time
    HANDSHAKE = "handshake"  # a ``Ready`` with the wrong IPC version or token
    SPAWN = "spawn"  # the process could not be started
    WRONG_DEVICE = "wrong_device"  # a GPU slot whose host came up on the CPU or another card
    VRAM_OOM = "vram_oom"  # the GPU ran out of memory (the engine's own words)
    RAM_OOM = "ram_oom"  # the kernel's OOM killer took the host
    UNLOAD_STUCK = "unload_stuck"  # told to unload, freed nothing in time
    PROBE_FAILED = "probe_failed"  # the GPU probe on a suspect device failed on this host
    GPU_SUSPECT = "gpu_suspect"  # its card faulted: replaced so a fresh host probes it
    RECYCLE = "recycle"  # planned restart between jobs (leak guard, job count)
    DRAIN = "drain"  # the supervisor is stopping; the host had no job (or finished it)
    FORCED = "forced"  # the supervisor is stopping now; a running job is cut short


# Planned stops and out-of-memory are no sign of a broken engine or driver: they never
# count toward parking the slot (an OOM is the memory governor's business).
NOT_CRASHES: Final = frozenset(
    {
        LossCause.RECYCLE,
        LossCause.DRAIN,
        LossCause.FORCED,
        LossCause.VRAM_OOM,
        LossCause.UNLOAD_STUCK,
        LossCause.GPU_SUSPECT,
    }
)
# Stopped politely (Shutdown message, grace, SIGTERM, SIGKILL) instead of killed at once.
POLITE: Final = frozenset(
    {
        LossCause.RECYCLE,
        LossCause.DRAIN,
        LossCause.UNLOAD_STUCK,
        LossCause.PROBE_FAILED,
        LossCause.GPU_SUSPECT,
    }
)
# A job running when the host went this way may be to blame: a strike toward poison, once
# a fresh host proves the engine sound (``loss_ledger``). Never while the job downloads.
JOB_STRIKES: Final = frozenset(
    {LossCause.EXIT, LossCause.SIGNAL, LossCause.HANG, LossCause.DEADLINE, LossCause.STALL}
)
# The slot stops for good (the pool is draining).
FINAL: Final = frozenset({LossCause.DRAIN, LossCause.FORCED})


@dataclass(frozen=True)
class Verdict:
    """Why a host generation ended. ``detail`` completes "engine host ... <detail>"."""

    cause: LossCause
    detail: str

    @property
    def crash(self) -> bool:
        """Counts toward the crash loop and backs off before the respawn."""
        return self.cause not in NOT_CRASHES

    @property
    def polite(self) -> bool:
        """The host is stopped by message and grace, not killed at once."""
        return self.cause in POLITE

    @property
    def strikes_job(self) -> bool:
        """The running job may be to blame (not while it was downloading)."""
        return self.cause in JOB_STRIKES

    @property
    def final(self) -> bool:
        return self.cause in FINAL
