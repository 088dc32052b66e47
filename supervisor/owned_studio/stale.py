"""Find and stop a local studio that outlived the supervisor which started it.

A studio dies with its supervisor (``--parent-pid``), but one that was stopped (SIGSTOP,
a debugger) or hung when its supervisor was killed stays, holding the port and the
database, and the next ``start --local`` could not start its own. The studio holds
``studio.lock`` in its data dir and writes ``pid=<pid> parent=<supervisor pid>`` into it
(``localstudio/data_lock.py``). So, before starting one, the supervisor (which holds the
config's ``daemon.lock``, so no live supervisor of this config can own a studio there):
nobody holds the data dir's lock -> nothing to do; a studio started by a supervisor that is
no longer its parent holds it -> stale: SIGCONT, SIGTERM, grace, SIGKILL; anyone else (a
studio started by hand, a process that is not a studio) -> refused, never signalled. The
rule (``stale_verdict``) is pure; the rest reads the lock and signals the one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final, assert_never

import anyio
import psutil

from supervisor.errors import LocalStudioError

log = logging.getLogger("supervisor.local")

LOCK_NAME: Final = "studio.lock"  # localstudio/data_lock.py (a test holds them equal)
STALE_GRACE_S: Final = 10.0
RELEASE_POLL_S: Final = 0.05


@dataclass(frozen=True)
class Holder:
    """What the data dir's lock says about the process holding it."""

    pid: int | None
    parent_pid: int | None  # the supervisor that started it; None: started by hand


@dataclass(frozen=True)
class HolderFacts:
    """What the system says about ``Holder.pid`` now (None: no such process)."""

    is_studio: bool  # its command line is `... -m localstudio ...`
    ppid: int


class Verdict(Enum):
    STALE = "stale"  # ours, orphaned: stop it
    FOREIGN = "foreign"  # not ours to stop: refuse


def parse_holder(text: str) -> Holder:
    fields = dict(item.partition("=")[::2] for item in text.split())
    pid, parent = fields.get("pid", ""), fields.get("parent", "")
    return Holder(int(pid) if pid.isdigit() else None, int(parent) if parent.isdigit() else None)


def stale_verdict(holder: Holder, facts: HolderFacts | None) -> Verdict:
    """STALE only for a studio process that a supervisor started and that is no longer
    that supervisor's child (re-parented when it died)."""
    if holder.pid is None or holder.parent_pid is None or facts is None:
        return Verdict.FOREIGN
    if facts.is_studio and facts.ppid != holder.parent_pid:
        return Verdict.STALE
    return Verdict.FOREIGN


def lock_holder(data_dir: Path) -> Holder | None:
    """Who holds the data dir's lock, or None when nobody does (probed without waiting)."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return parse_holder(os.pread(fd, 128, 0).decode("ascii", errors="replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder_facts(pid: int) -> HolderFacts | None:
    try:
        proc = psutil.Process(pid)
        return HolderFacts(is_studio="localstudio" in proc.cmdline(), ppid=proc.ppid())
    except psutil.Error:
        return None


async def stop_stale_studio(data_dir: Path) -> None:
    """Stop a stale studio of this data dir, if there is one; raises LocalStudioError when
    the data dir is held by something this supervisor may not stop."""
    holder = lock_holder(data_dir)
    if holder is None:
        return
    facts = holder_facts(holder.pid) if holder.pid is not None else None
    verdict = stale_verdict(holder, facts)
    match verdict:
        case Verdict.FOREIGN:
            who = f"pid {holder.pid}" if holder.pid is not None else "a process"
            raise LocalStudioError(
                f"the local studio's data dir {data_dir} is in use by {who}, which this "
                "supervisor did not start; stop it, or run `start --local` with another --config"
            )
        case Verdict.STALE:
            assert holder.pid is not None
            log.warning(
                "stopping a stale local studio pid=%d (its supervisor pid=%s is gone) data=%s",
                holder.pid,
                holder.parent_pid,
                data_dir,
            )
            if not await _terminate(holder.pid, data_dir):
                raise LocalStudioError(
                    f"the stale local studio pid {holder.pid} still holds {data_dir} after "
                    "SIGKILL; stop it by hand"
                )
            log.info("stopped the stale local studio pid=%d", holder.pid)
        case _:
            assert_never(verdict)


async def _terminate(pid: int, data_dir: Path) -> bool:
    """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, grace, SIGKILL; True
    once the data dir's lock is free (the kernel drops it as the process ends, zombie or
    not, so that is the moment to wait for)."""
    for signum in (signal.SIGCONT, signal.SIGTERM):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    if await _released_within(data_dir, STALE_GRACE_S):
        return True
    log.warning(
        "stale local studio pid=%d ignored SIGTERM for %.0f s; killing it", pid, STALE_GRACE_S
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return await _released_within(data_dir, STALE_GRACE_S)


async def _released_within(data_dir: Path, timeout_s: float) -> bool:
    # Polled: the process is not our child, and a lock's release announces nothing.
    with anyio.move_on_after(timeout_s):
        while True:
            if lock_holder(data_dir) is None:
                return True
            await anyio.sleep(RELEASE_POLL_S)
    return False
