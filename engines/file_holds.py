"""Shared holds on model files, so that no host's cache eviction deletes a file in use.

Several engine hosts share ``models_root``. A host holds every model file it uses (the
files its job provisioned, the files of each model it keeps loaded) with a shared
``flock`` on the file itself; eviction deletes a file only while it holds that file's
exclusive lock, taken without blocking, so a held file is never a candidate. ``flock``
locks belong to an open file description: they exclude other descriptors of the same
process too (a host's own eviction skips its own files) and the kernel drops them when a
holder dies, so a crashed host holds nothing. A hold taken on a file that eviction unlinked
meanwhile is worthless (the path names a new file or none); ``hold_file`` checks the path
still names the locked inode and reports such a file as gone.

Advisory and POSIX only, like the hosts: a process that ignores these locks (an operator's
``rm``) is not stopped. This module decides nothing about which files to hold or evict.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterable
from pathlib import Path


class FileHold:
    """One shared lock on one file, released by ``release`` (idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the lock

    @property
    def held(self) -> bool:
        return self._fd is not None


def hold_file(path: Path) -> FileHold | None:
    """A shared hold on ``path``; None when it is not there (or was just evicted).

    Blocks only while an eviction holds the file's exclusive lock, which lasts as long as
    that eviction takes to delete it. Raises ``OSError`` for anything but a missing file.
    """
    fd = _open(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if _still_linked(fd, path):
            return FileHold(path, fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def lock_for_removal(path: Path) -> FileHold | None:
    """The exclusive lock of ``path`` when nobody holds the file, without blocking; None
    when someone does, or when the file is gone. Delete the file before releasing it."""
    fd = _open(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if not _still_linked(fd, path):
        os.close(fd)
        return None
    return FileHold(path, fd)


class HeldFiles:
    """A set of holds replaced as a whole: the new files are held before the old ones are
    let go, so a file in both is never unheld in between. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: list[FileHold] = []

    def replace(self, holds: Iterable[FileHold]) -> None:
        new = list(holds)
        with self._lock:
            old, self._holds = self._holds, new
        release_all(old)

    def paths(self) -> list[Path]:
        with self._lock:
            return [hold.path for hold in self._holds]

    def clear(self) -> None:
        self.replace(())


def hold_files(paths: Iterable[Path]) -> list[FileHold]:
    """A hold on each of ``paths`` that is there (a missing one is skipped)."""
    holds: list[FileHold] = []
    try:
        for path in paths:
            hold = hold_file(path)
            if hold is not None:
                holds.append(hold)
    except BaseException:
        release_all(holds)
        raise
    return holds


def release_all(holds: Iterable[FileHold]) -> None:
    for hold in holds:
        hold.release()


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _still_linked(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()  # a symlinked model is held by its target
    except FileNotFoundError:
        return False
    return os.path.samestat(os.fstat(fd), on_disk)
