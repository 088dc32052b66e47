"""The model cache's disk budget as pure decisions: which files may go, in which order, and
how many bytes a download needs freed. No I/O, no clock: ``engines.model_cache`` scans the
directory, takes the locks and deletes.

Everything under ``models_root`` counts against the budget (``models_max_gb``); eviction
takes only model files: never a partial download (``*.part``, resumable), a lock file, a
hidden file or the Rust worker's ``bin/`` (its sd-cli), and never a file a host holds
(decided by the caller, through the file's lock). Least recently used goes first: the use
time is the file's access time, which the cache sets on every use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Final

GIB: Final = 2**30  # the config's GB are GiB, as everywhere in this worker
BIN_DIR: Final = "bin"
_NEVER_EVICTED_SUFFIXES: Final = (".part", ".lock")


@dataclass(frozen=True)
class CachedFile:
    """One regular file under ``models_root``."""

    path: Path
    size: int
    used_ns: int  # last use: the file's access time
    evictable: bool


def budget_bytes(models_max_gb: float) -> int:
    """``models_max_gb`` in bytes; 0 (no budget) stays 0."""
    return max(0, int(models_max_gb * GIB))


def is_evictable(relative: PurePath) -> bool:
    """Whether a file at ``relative`` (to ``models_root``) is a model file eviction may take."""
    parts = relative.parts
    if not parts or parts[0] == BIN_DIR:
        return False
    name = parts[-1]
    return not name.startswith(".") and not name.endswith(_NEVER_EVICTED_SUFFIXES)


def eviction_order(files: Iterable[CachedFile]) -> list[CachedFile]:
    """The evictable files, least recently used first (ties by path, so runs agree)."""
    return sorted((f for f in files if f.evictable), key=lambda f: (f.used_ns, str(f.path)))


def disk_required(declared: int) -> int:
    """Free disk a download of ``declared`` bytes needs: 10 % headroom, as the Rust worker
    (its size is only declared; the body may be a little larger)."""
    return declared + declared // 10


@dataclass(frozen=True)
class RoomNeed:
    """How far a download of ``declared`` bytes is from fitting, in bytes (0: it fits)."""

    over_budget: int
    short_on_disk: int

    @property
    def to_free(self) -> int:
        # Eviction frees both at once: the cache lives on the models filesystem.
        return max(self.over_budget, self.short_on_disk)


def room_need(*, budget: int, used: int, declared: int, free_disk: int | None) -> RoomNeed:
    """What eviction must free before ``declared`` bytes arrive: what would pass the budget
    (``budget`` 0: none) and what the disk lacks (``free_disk`` None: not known)."""
    over = max(0, used + declared - budget) if budget > 0 else 0
    short = max(0, disk_required(declared) - free_disk) if free_disk is not None else 0
    return RoomNeed(over, short)
