"""The models an engine keeps loaded: a least-recently-used set keyed by load key.

Each engine owns one and decides what a model is; this module only keeps the order, the
sizes the host reports in ``Resident``, and frees through the engine's own function. It
does no loading and asks nobody: ``before_load`` is the engine's call, made after
``make_room`` so the memory of an evicted model is free before the next one is asked for.
It holds the files each model was loaded from (``engines.file_holds``) for as long as the
model stays, so no host's model cache eviction deletes them from under it. Used on the job
thread only, so it takes no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from engines.file_holds import FileHold, hold_files, release_all
from protocol.ipc import ResidentModel

M = TypeVar("M")


@dataclass
class _Entry(Generic[M]):
    model: M
    size_bytes: int
    holds: list[FileHold] = field(default_factory=list)


class WarmModels(Generic[M]):
    """Loaded models by load key, least recently used first; ``free`` releases one."""

    def __init__(self, free: Callable[[str, M], None]) -> None:
        self._free = free
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def use(self, key: str) -> M | None:
        """The model kept under ``key``, now the most recently used; None if not loaded."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry.model

    def peek(self, key: str) -> M | None:
        """The model under ``key`` without changing the order."""
        entry = self._entries.get(key)
        return None if entry is None else entry.model

    def make_room(self, limit: int) -> list[str]:
        """Free the least recently used until one more fits under ``limit`` (at least 1);
        returns the evicted keys, oldest first."""
        evicted: list[str] = []
        while self._entries and len(self._entries) >= max(1, limit):
            key = next(iter(self._entries))
            self.discard(key)
            evicted.append(key)
        return evicted

    def add(self, key: str, model: M, size_bytes: int, files: Iterable[Path] = ()) -> None:
        """Keep a freshly loaded model as the most recently used (``key`` must be free),
        holding ``files``, the ones it was loaded from, until it goes."""
        assert key not in self._entries, f"{key} is loaded already"
        self._entries[key] = _Entry(model, size_bytes, hold_files(files))

    def discard(self, key: str) -> bool:
        """Free the model under ``key``; False when there is none. It leaves the set before
        it is freed, so a free that raises never leaves a dead model listed."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        try:
            self._free(key, entry.model)
        finally:
            release_all(entry.holds)
        return True

    def clear(self) -> None:
        """Free every model, oldest first."""
        for key in list(self._entries):
            self.discard(key)

    def resident(self) -> list[ResidentModel]:
        return [ResidentModel(key, e.size_bytes) for key, e in self._entries.items()]
