"""How one engine host was started: its slot, the supervisor's socket, its spawn token and
the GPU-memory handshake (``python -m engines`` builds it from its command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostOptions:
    engine: str
    slot: str
    endpoint: str
    token: str
    models_root: Path
    parent_pid: int
    heartbeat_s: float = 1.0
    # Send ``LoadRequest`` and wait for ``LoadGrant`` before every model load.
    ask_before_load: bool = False
