"""Tunables of the engine pool, with the documented defaults (docs/operator-guide.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supervisor.pool.policies import RecycleLimits


@dataclass(frozen=True)
class PoolSettings:
    models_root: Path
    # Disk budget of models_root (config `models_max_gb`) in bytes; 0: none.
    models_max_bytes: int = 0
    heartbeat_s: float = 1.0
    ready_timeout_s: float = 120.0
    # A host's heartbeats come from its I/O thread, so silence means a frozen process.
    # Loading a model may hold the GIL for a while, hence the longer timeout there.
    heartbeat_timeout_idle_s: float = 10.0
    heartbeat_timeout_busy_s: float = 30.0
    heartbeat_timeout_loading_s: float = 300.0
    # A job that beats but makes no progress (no step, no token) for this long is stuck.
    stall_timeout_s: float = 600.0
    # Downloads answer to these instead of the job deadline and the stall timeout. The
    # stall limit sits above the host's own read timeout (120 s, engines/download.py), so
    # an ordinary dead connection fails the job from the host without losing the host.
    download_stall_s: float = 300.0
    download_deadline_s: float = 14400.0
    restart_backoff_base_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    crash_loop_max: int = 5
    crash_loop_window_s: float = 60.0
    crash_loop_cooldown_s: float = 300.0
    recycle: RecycleLimits = field(
        default_factory=lambda: RecycleLimits(
            after_jobs=0, rss_growth_bytes=4096 * 2**20, vram_growth_bytes=2048 * 2**20
        )
    )
    shutdown_grace_s: float = 5.0
    term_grace_s: float = 5.0
    poison_strikes: int = 2
    faults: str = ""  # synthetic fault injection, for tests and drills
    # CPU threads of each real engine host; None: the pool shares the cores out equally.
    cpu_threads: int | None = None
    watchdog_tick_s: float = 0.05
