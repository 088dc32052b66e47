"""Why an engine host died, read from the engine's own words first and the signal second,
and whether the device it ran on is now suspect.

Pure functions of what the slot saw (the exit status, whether the supervisor sent the kill,
the host's last stderr lines, whether the cgroup's OOM-kill counter grew) plus one small
reader of that counter. The texts are read by :mod:`engines.failure_text`, which the hosts
share. This module decides nothing about restarts, backoff, memory or quarantine: those act
on the :class:`LossCause` and the suspect reason it returns. It never touches a process.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Final

from engines.cpu_threads import cgroup_paths
from engines.failure_text import FailureKind, first_failure
from supervisor.pool.verdict import LossCause, Verdict

# A native fault other than out-of-memory: the driver or the card may be at fault.
_FAULT_SIGNALS: Final = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})
_OOM_KINDS: Final = frozenset({FailureKind.VRAM_OOM, FailureKind.RAM_OOM})
_REASON_MAX_CHARS: Final = 200
_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_PROC_SELF_CGROUP: Final = Path("/proc/self/cgroup")


def classify_host_loss(
    *, returncode: int, we_killed: bool, stderr_tail: Sequence[str], oom_kills_grew: bool
) -> LossCause:
    """Why a host that exited with ``returncode`` (negative: the signal) died.

    The caller names the causes of stops it ordered itself (hang, deadline, recycle, drain);
    this reads a death. The first out-of-memory line of ``stderr_tail`` (oldest first, this
    generation's lines only: a stale line from an earlier job would hide a crash) decides
    whose memory ran out.

    - An out-of-GPU-memory text: ``VRAM_OOM``, whatever the exit (a ggml OOM may abort).
    - SIGKILL that the supervisor did not send while the cgroup's ``oom_kill`` counter grew:
      ``RAM_OOM`` (the kernel's OOM killer; it leaves no words behind).
    - A host-memory text (a CPU buffer, ``bad_alloc``, ``MemoryError``): ``RAM_OOM``.
    - Otherwise a signal death is ``SIGNAL`` and an exit ``EXIT``. A device-error text does
      not change the cause (it is a crash); :func:`is_device_fault` reports it.
    """
    oom = first_failure(stderr_tail, _OOM_KINDS)
    if oom is not None and oom.kind is FailureKind.VRAM_OOM:
        return LossCause.VRAM_OOM
    if returncode == -signal.SIGKILL and not we_killed and oom_kills_grew:
        return LossCause.RAM_OOM
    if oom is not None:
        return LossCause.RAM_OOM
    return LossCause.SIGNAL if returncode < 0 else LossCause.EXIT


def is_device_fault(returncode: int | None, stderr_tail: Sequence[str]) -> str | None:
    """Why the device of a host that ended with ``returncode`` (None: still running, e.g.
    a failed job's error text) is now suspect, or None if nothing points at it.

    - Any device-error line (illegal address, launch failure, device lost, Xid):
      ``"device error: <the line>"``. Any, not only the first: no out-of-memory failure
      causes one, so an earlier OOM line never excuses it.
    - Death by SIGSEGV, SIGBUS or SIGABRT with no out-of-memory line in the tail:
      ``"died by SIGSEGV"``. ggml aborts on an allocation failure too, which is no fault of
      the device.
    - Anything else (an exit, SIGKILL, SIGTERM, an OOM abort): None.
    """
    device = first_failure(stderr_tail, {FailureKind.DEVICE_ERROR})
    if device is not None:
        return f"device error: {device.line[:_REASON_MAX_CHARS]}"
    if returncode is None or returncode >= 0:
        return None
    try:
        signum = signal.Signals(-returncode)
    except ValueError:
        return None
    if signum in _FAULT_SIGNALS and first_failure(stderr_tail, _OOM_KINDS) is None:
        return f"died by {signum.name}"
    return None


def parse_oom_kill(text: str) -> int | None:
    """The ``oom_kill`` counter of a cgroup v2 ``memory.events`` or a v1
    ``memory.oom_control`` (both "key value" lines), or None if it has none."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _v1_memory_path(proc_self_cgroup: str) -> str | None:
    # cpu_threads.cgroup_paths gives the v2 path and the v1 *cpu* controller's; the memory
    # controller's v1 line is ours to find.
    for line in proc_self_cgroup.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return path
    return None


def _cgroup_counter(mount: Path, relative: str, filename: str, *, ancestors: bool) -> int | None:
    """The counter of the process's cgroup under ``mount`` or, with ``ancestors``, of its
    nearest ancestor that has one: v2 counts a kill in every ancestor too, so a cgroup without
    the memory controller is counted by its parent; v1 counts it only where it happened."""
    parts = [part for part in PurePosixPath(relative).parts if part not in ("/", ".")]
    if ".." in parts:
        # A cgroup outside this namespace's view: its root is no ancestor of the process,
        # and a counter of other processes' kills would read as ours.
        return None
    depths = range(len(parts), -1, -1) if ancestors else (len(parts),)
    for depth in depths:
        try:
            text = mount.joinpath(*parts[:depth], filename).read_text()
        except OSError:
            continue
        count = parse_oom_kill(text)
        if count is not None:
            return count
    return None


def read_oom_kill_count(
    cgroup_root: Path = _CGROUP_ROOT, proc_self_cgroup: Path = _PROC_SELF_CGROUP
) -> int | None:
    """How many processes the kernel's OOM killer has taken from this process's cgroup (the
    hosts are spawned into it), or None when no counter can be read.

    cgroup v2 ``memory.events`` (a pure hierarchy, or a hybrid's ``unified``), else v1
    ``memory.oom_control`` (Linux 4.13+). The kernel counts a kill in the victim's cgroup
    whether the cgroup's limit or the whole machine ran out. A cgroup that this mount does
    not show (a container's view of another namespace) has no counter here: None, never a
    stranger's. Read it before a host runs and after it dies: a growth with an unsent
    SIGKILL is ``ram_oom``.
    """
    try:
        text = proc_self_cgroup.read_text()
    except OSError:
        return None
    v2, _ = cgroup_paths(text)
    v1 = _v1_memory_path(text)
    counts: list[int | None] = []
    if v2 is not None:
        for mount in (cgroup_root, cgroup_root / "unified"):
            counts.append(_cgroup_counter(mount, v2, "memory.events", ancestors=True))
    if v1 is not None:
        mount = cgroup_root / "memory"
        counts.append(_cgroup_counter(mount, v1, "memory.oom_control", ancestors=False))
    return next((count for count in counts if count is not None), None)


def death_verdict(
    returncode: int,
    described: str,
    *,
    we_killed: bool,
    stderr_tail: Sequence[str],
    oom_kills_grew: bool,
) -> Verdict:
    """The verdict for a host that died: its cause (``classify_host_loss``) and the words
    for the operator (``described`` is the exit, e.g. ``killed by SIGSEGV``)."""
    cause = classify_host_loss(
        returncode=returncode,
        we_killed=we_killed,
        stderr_tail=stderr_tail,
        oom_kills_grew=oom_kills_grew,
    )
    if cause is LossCause.VRAM_OOM:
        return Verdict(cause, f"ran out of GPU memory and died ({described})")
    if cause is LossCause.RAM_OOM:
        return Verdict(cause, f"was killed by the kernel's out-of-memory killer ({described})")
    return Verdict(cause, f"died ({described})")
