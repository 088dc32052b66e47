"""An exclusive lock file, so two hosts (or two threads) never download one file at once.

``fcntl.flock`` locks belong to an open file description, so they exclude other threads of
the same process as well as other processes, and the kernel drops them when a holder dies.
The holder deletes the lock file before it lets go; a waiter that then wins the lock on the
deleted inode notices (its descriptor no longer matches the path) and locks the new file
instead. That keeps the models directory free of stale ``.lock`` files without a race.
POSIX only, like the hosts themselves.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, removed on exit); blocks."""
    fd = _lock_current_file(path)
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _lock_current_file(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _still_linked(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removed this file while we waited: lock the current one.
        os.close(fd)


def _still_linked(fd: int, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    return os.path.samestat(os.fstat(fd), on_disk)
