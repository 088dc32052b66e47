"""The engines' CPU thread count: physical cores, affinity, cgroup quotas, the override."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from engines.cpu_threads import (
    MAX_THREADS,
    THREADS_ENV,
    available_cores,
    cgroup_paths,
    engine_threads,
    host_threads,
    parse_cpu_max,
    parse_threads_override,
    physical_cores,
    quota_cpus,
    threads_per_host,
)
from tests.pool_harness import running_pool


def test_smt_siblings_count_as_one_core() -> None:
    # Two cores with two hardware threads each, numbered the way Linux does (0-1 | 2-3).
    topology = {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")}
    assert physical_cores([0, 1, 2, 3], topology.get) == 2
    assert physical_cores([0, 2], topology.get) == 1  # both threads of one core


def test_cores_of_other_packages_are_distinct() -> None:
    topology = {0: ("0", "0"), 1: ("1", "0")}
    assert physical_cores([0, 1], topology.get) == 2


def test_a_cpu_without_topology_counts_as_a_core() -> None:
    assert physical_cores([0, 1, 2], lambda cpu: None) == 3
    assert physical_cores([], lambda cpu: None) == 1


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [(150_000, 100_000, 1), (200_000, 100_000, 2), (50_000, 100_000, 1), (-1, 100_000, None)],
)
def test_a_quota_rounds_down_to_whole_cpus(quota: int, period: int, cpus: int | None) -> None:
    assert quota_cpus(quota, period) == cpus


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("max 100000\n", None), ("250000 100000\n", (250_000, 100_000)), ("junk", None), ("", None)],
)
def test_cgroup_v2_cpu_max(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_cpu_max(text) == parsed


def test_cgroup_paths_of_v2_and_v1_hierarchies() -> None:
    assert cgroup_paths("0::/system.slice/worker.service\n") == (
        "/system.slice/worker.service",
        None,
    )
    hybrid = "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n0::/\n"
    assert cgroup_paths(hybrid) == ("/", "/docker/abc")
    assert cgroup_paths("3:cpuacct:/a\n") == (None, None)  # cpuacct alone sets no quota


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5", str(MAX_THREADS + 1), "٣"])
def test_a_bad_override_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=THREADS_ENV):
        parse_threads_override(raw)


def test_the_override_wins_and_blank_means_unset() -> None:
    assert engine_threads({THREADS_ENV: " 3 "}) == 3
    assert engine_threads({THREADS_ENV: ""}) == available_cores()
    assert engine_threads({}) == available_cores()


def test_the_count_follows_this_machine_and_its_affinity_mask() -> None:
    cpus = os.sched_getaffinity(0)
    assert 1 <= available_cores() <= len(cpus)
    # In a child pinned to one CPU (what `taskset` or a cpuset does), one thread.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from engines.cpu_threads import available_cores; print(available_cores())"
    )
    pinned = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert pinned.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("cores", "hosts", "each"), [(2, 2, 1), (16, 3, 5), (2, 5, 1), (8, 1, 8), (4, 0, 4)]
)
def test_hosts_share_the_cores_equally(cores: int, hosts: int, each: int) -> None:
    assert threads_per_host(cores, hosts) == each


def test_the_override_applies_to_every_host() -> None:
    assert host_threads(4, {THREADS_ENV: "6"}) == 6
    assert host_threads(2, {}) == threads_per_host(available_cores(), 2)


def _threads_arg(pid: int) -> str | None:
    argv = psutil.Process(pid).cmdline()
    return argv[argv.index("--threads") + 1] if "--threads" in argv else None


@pytest.mark.anyio
async def test_the_pool_gives_each_engine_host_its_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    async with running_pool(tmp_path, "llama,sdcpp") as run:
        await run.ready(60)
        given = {s.engine: _threads_arg(s.host.pid) for s in run.pool.slots if s.host}
    share = str(threads_per_host(available_cores(), 2))
    assert given == {"llama": share, "sdcpp": share, "synthetic": None}

    monkeypatch.setenv(THREADS_ENV, "3")
    async with running_pool(tmp_path, "llama,-synthetic") as run:
        await run.ready(60)
        assert [_threads_arg(s.host.pid) for s in run.pool.slots if s.host] == ["3"]


def test_a_host_refuses_a_bad_thread_count() -> None:
    argv = [sys.executable, "-m", "engines", "--engine", "llama", "--slot", "s"]
    argv += ["--endpoint", "ipc:///nonexistent", "--models-root", "/tmp", "--threads", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--threads: expected a whole number >= 1, got '0'" in done.stderr
