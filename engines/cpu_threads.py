"""How many CPU threads an engine host gives llama.cpp and stable-diffusion.cpp.

Both Python bindings default to ``cpu_count() // 2``, which assumes two hardware threads
per core. On a machine or VM without SMT that leaves half the cores idle (measured on a
2-core VM: llama generation 1.4x and sd-cpp sampling 1.7x slower than with both cores),
and in a container held to a CPU quota or an affinity mask it counts CPUs the process may
not use. The count here is the physical cores among the CPUs this process may run on,
capped by a cgroup (v2 or v1) CPU quota.

Hosts must not ask for more threads together than there are cores: the libraries' worker
threads spin while they wait for each other, so two hosts each running on every core
while both compute slow down by an order of magnitude, not by half (measured on 2 cores:
an sdcpp and a llama host at 2 threads each made 5 tokens/s and a 6 s image, against 117
tokens/s and 0.45 s at 1 thread each). The supervisor therefore gives each of its engine
hosts an equal share (:func:`host_threads`); ``STUDIO_WORKER_THREADS`` overrides it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Final

THREADS_ENV: Final = "STUDIO_WORKER_THREADS"
MAX_THREADS: Final = 1024
_SYS_CPU: Final = Path("/sys/devices/system/cpu")
_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def parse_threads_override(raw: str) -> int | None:
    """The override's value: None when unset or blank; ValueError with the reason if bad."""
    text = raw.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_THREADS:
        raise ValueError(
            f"{THREADS_ENV} must be a whole number from 1 to {MAX_THREADS}, got {raw!r}"
        )
    return int(text)


def physical_cores(cpus: Iterable[int], core_of: Callable[[int], object | None]) -> int:
    """Distinct cores among ``cpus``; a CPU whose core is unknown counts as its own core."""
    cores: set[object] = set()
    for cpu in cpus:
        core = core_of(cpu)
        cores.add(("cpu", cpu) if core is None else core)
    return max(1, len(cores))


def quota_cpus(quota: int, period: int) -> int | None:
    """Whole CPUs a CFS quota allows (None: no quota), rounded down but at least 1: a
    thread beyond the quota only adds throttling stalls."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, quota // period)


def parse_cpu_max(text: str) -> tuple[int, int] | None:
    """cgroup v2 ``cpu.max`` (``"<quota|max> <period>"``) as (quota, period); None if unlimited."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]), int(fields[1])
    except ValueError:
        return None


def cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """This process's (v2, v1 ``cpu`` controller) cgroup paths from ``/proc/self/cgroup``."""
    v2: str | None = None
    v1: str | None = None
    for line in proc_self_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def sysfs_core(cpu: int, sys_cpu: Path = _SYS_CPU) -> str | None:
    """The CPUs sharing ``cpu``'s core, as the kernel lists them (``"0,8"``, ``"0-1"``):
    the same text for every hardware thread of one core. ``core_id`` alone is not unique
    across packages or dies."""
    topology = sys_cpu / f"cpu{cpu}" / "topology"
    for name in ("core_cpus_list", "thread_siblings_list"):  # the second before Linux 5.7
        text = _read(topology / name)
        if text is not None and text.strip():
            return text.strip()
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _v2_limit(directory: Path) -> int | None:
    text = _read(directory / "cpu.max")
    limit = parse_cpu_max(text) if text is not None else None
    return quota_cpus(*limit) if limit is not None else None


def _v1_limit(directory: Path) -> int | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    try:
        return quota_cpus(int(quota), int(period))
    except ValueError:
        return None


def _tightest(mount: Path, relative: str, limit_of: Callable[[Path], int | None]) -> int | None:
    """The smallest limit from the process's cgroup up to the mount's root; inside a
    container with a cgroup namespace the path reads ``/`` and the root is its own."""
    parts = [part for part in PurePosixPath(relative).parts if part not in ("/", ".")]
    if ".." in parts:  # a cgroup outside this namespace's view: only the root is known
        parts = []
    limits: list[int] = []
    for depth in range(len(parts), -1, -1):
        limit = limit_of(mount.joinpath(*parts[:depth]))
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def cgroup_cpu_limit(proc_self_cgroup: str, root: Path = _CGROUP_ROOT) -> int | None:
    """Whole CPUs the tightest CPU quota on this process's cgroups allows, v2 (a pure
    hierarchy or a hybrid's ``unified``) or v1 (``cpu`` controller); None: no quota."""
    v2, v1 = cgroup_paths(proc_self_cgroup)
    found: list[int | None] = []
    if v2 is not None:
        found += [_tightest(mount, v2, _v2_limit) for mount in (root, root / "unified")]
    if v1 is not None:
        mounts = (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu")
        found += [_tightest(mount, v1, _v1_limit) for mount in mounts]
    limits = [limit for limit in found if limit is not None]
    return min(limits) if limits else None


def available_cores() -> int:
    """Physical cores this process may use, capped by its cgroup's CPU quota."""
    cores = physical_cores(sorted(os.sched_getaffinity(0)), sysfs_core)
    text = _read(Path("/proc/self/cgroup"))
    quota = cgroup_cpu_limit(text) if text is not None else None
    return cores if quota is None else min(cores, quota)


def threads_per_host(cores: int, hosts: int) -> int:
    """An equal share of ``cores`` for each of ``hosts`` that may compute at once."""
    return max(1, cores // max(1, hosts))


def host_threads(hosts: int, environ: Mapping[str, str] = os.environ) -> int:
    """Threads for each of ``hosts`` engine hosts: the override if set, else an equal share
    of :func:`available_cores`."""
    override = parse_threads_override(environ.get(THREADS_ENV, ""))
    return override if override is not None else threads_per_host(available_cores(), hosts)


def engine_threads(environ: Mapping[str, str] = os.environ) -> int:
    """For a host started without a count (by hand, or a benchmark): the whole machine."""
    return host_threads(1, environ)
