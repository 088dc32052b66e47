"""One studio process per data directory: an ``flock`` on ``<data dir>/studio.lock``.

Two studios on one SQLite file would each requeue the other's claims at start and offer the
same job twice. ``LocalStudio.serve`` holds the lock from before it opens the database
until after it closed it; the kernel drops it when the process ends, ``kill -9`` included.
The holder writes one line, ``pid=<its pid> parent=<pid of the supervisor that started it,
or ->``, so a refused studio can name the holder and ``supervisor start --local`` can
recognise (and stop) a stale studio it started before a crash. The file is never deleted
(a waiter could otherwise lock a removed inode). No other I/O here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from localstudio.errors import DataDirBusyError

LOCK_NAME: Final = "studio.lock"
LOCK_MODE: Final = 0o600


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int | None
    parent_pid: int | None  # None: started by hand, not by a supervisor


def render_holder(pid: int, parent_pid: int | None) -> str:
    return f"pid={pid} parent={parent_pid if parent_pid is not None else '-'}\n"


def parse_holder(text: str) -> LockHolder:
    """What ``render_holder`` wrote; missing or garbled fields are None."""
    fields = dict(item.partition("=")[::2] for item in text.split())
    pid, parent = fields.get("pid", ""), fields.get("parent", "")
    return LockHolder(
        int(pid) if pid.isdigit() else None, int(parent) if parent.isdigit() else None
    )


@contextlib.contextmanager
def data_dir_lock(data_dir: Path, parent_pid: int | None = None) -> Iterator[None]:
    """Hold the data dir's lock (the directory must exist) for the block; raises
    DataDirBusyError at once, naming the holder, when another process holds it."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = parse_holder(os.pread(fd, 128, 0).decode("ascii", errors="replace"))
            raise DataDirBusyError(str(data_dir), holder.pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, render_holder(os.getpid(), parent_pid).encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # nobody holds it: no pid to mistake for a holder
    finally:
        os.close(fd)
