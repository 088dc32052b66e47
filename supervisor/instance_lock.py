"""One supervisor per config: an ``flock`` on ``daemon.lock`` beside the config file.

The Rust daemon's lock file name (protocol.md §10.3), so the two workers exclude each other
too. ``Supervisor`` takes it before it creates anything (control socket, local studio,
engine hosts) and holds it for its whole life; the kernel drops it when the process ends,
``kill -9`` included, so a crash never leaves a stale lock to clean up. The holder writes
its pid into the file, so a refused ``start`` can name who holds it. The file itself is
never deleted: removing a lock file while another process waits on it would let two
processes hold "the" lock on two inodes. This module must not start or signal anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from supervisor.errors import AnotherSupervisorRunning, ConfigError

LOCK_NAME: Final = "daemon.lock"
LOCK_MODE: Final = 0o600


def lock_path(config_path: Path) -> Path:
    return config_path.parent / LOCK_NAME


def holder_pid(text: str) -> int | None:
    """The pid a holder wrote into the lock file, or None for an empty or garbled file (a
    holder between taking the lock and writing its pid, or a foreign writer)."""
    first = text.strip().split(maxsplit=1)
    if not first or not first[0].isdigit():
        return None
    return int(first[0])


class InstanceLock:
    """The held lock; ``release`` (or the process ending) lets the next supervisor in."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no pid of a process that no longer holds it
        os.close(fd)  # closing the only descriptor drops the flock


def hold_instance_lock(config_path: Path) -> InstanceLock:
    """Take the lock of ``config_path``'s directory without waiting and write our pid into
    it. Raises AnotherSupervisorRunning (with the holder's pid) when it is held, ConfigError
    when the file cannot be opened."""
    path = lock_path(config_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: an engine host or the local studio must never inherit the lock, or an
        # orphan could keep the next supervisor out.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, LOCK_MODE)
    except OSError as exc:
        raise ConfigError(f"opening {path} (the supervisor's lock): {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace")
        os.close(fd)
        raise AnotherSupervisorRunning(config_path, holder_pid(text)) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return InstanceLock(path, fd)
