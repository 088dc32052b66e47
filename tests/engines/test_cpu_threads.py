"""The engines' CPU thread count: physical cores, affinity, cgroup quotas, the override."""

from __future__ import annotations

import dataclasses
import logging
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
    cgroup_cpu_limit,
    cgroup_paths,
    engine_threads,
    host_threads,
    parse_cpu_max,
    parse_threads_override,
    physical_cores,
    quota_cpus,
    sysfs_core,
    threads_per_host,
)
from supervisor.pool.engine_pool import _with_cpu_threads
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines
from tests.support.pool_harness import running_pool


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_smt_siblings_count_as_one_core(tmp_path: Path) -> None:
    # Two cores with two hardware threads each, numbered the way Linux does (0,2 | 1,3);
    # cpu1 and cpu3 on a kernel from before core_cpus_list.
    for cpu, name, siblings in (
        (0, "core_cpus_list", "0,2"),
        (2, "core_cpus_list", "0,2"),
        (1, "thread_siblings_list", "1,3"),
        (3, "thread_siblings_list", "1,3"),
    ):
        _write(tmp_path / f"cpu{cpu}" / "topology" / name, siblings + "\n")
    assert physical_cores([0, 1, 2, 3], lambda cpu: sysfs_core(cpu, tmp_path)) == 2
    assert physical_cores([0, 2], lambda cpu: sysfs_core(cpu, tmp_path)) == 1
    assert sysfs_core(7, tmp_path) is None


def test_a_cpu_without_topology_counts_as_a_core() -> None:
    assert physical_cores([0, 1, 2], lambda cpu: None) == 3
    assert physical_cores([], lambda cpu: None) == 1


def test_the_tightest_v2_quota_on_the_path_wins(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    _write(tmp_path / "a" / "cpu.max", "300000 100000\n")
    _write(tmp_path / "a" / "b" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit("0::/a/b\n", tmp_path) == 3
    _write(tmp_path / "cpu.max", "200000 100000\n")  # a parent's limit binds its children
    assert cgroup_cpu_limit("0::/a/b\n", tmp_path) == 2
    assert cgroup_cpu_limit("0::/\n", tmp_path) == 2  # a container's own namespace


def test_a_cgroup_path_missing_from_the_mount_falls_back_to_its_root(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit("0::/docker/0123abcd\n", tmp_path) == 1
    assert cgroup_cpu_limit("0::/../elsewhere\n", tmp_path) == 1
    assert cgroup_cpu_limit("0::/docker/0123abcd\n", tmp_path / "nothing-mounted") is None


def test_v1_and_hybrid_hierarchies(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    _write(v1 / "cpu.cfs_quota_us", "400000\n")
    _write(v1 / "cpu.cfs_period_us", "100000\n")
    hybrid = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/docker/abc\n"
    assert cgroup_cpu_limit(hybrid, tmp_path) == 4
    _write(tmp_path / "unified" / "docker" / "abc" / "cpu.max", "300000 100000\n")
    assert cgroup_cpu_limit(hybrid, tmp_path) == 3
    _write(v1 / "cpu.cfs_quota_us", "-1\n")  # v1's "no quota"
    (tmp_path / "unified" / "docker" / "abc" / "cpu.max").unlink()
    assert cgroup_cpu_limit(hybrid, tmp_path) is None


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


def test_the_pool_warns_when_its_hosts_ask_for_more_threads_than_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    specs = parse_engines("llama,sdcpp")
    settings = PoolSettings(models_root=tmp_path)
    monkeypatch.setenv(THREADS_ENV, str(available_cores()))
    with caplog.at_level(logging.INFO, logger="supervisor.pool"):
        resolved = _with_cpu_threads(specs, settings)
    assert resolved.cpu_threads == available_cores()
    assert "ask for more than the" in caplog.text

    caplog.clear()
    monkeypatch.delenv(THREADS_ENV)
    with caplog.at_level(logging.INFO, logger="supervisor.pool"):
        resolved = _with_cpu_threads(parse_engines("llama"), settings)
    assert resolved.cpu_threads == available_cores()
    assert "ask for more" not in caplog.text
    assert f"{available_cores()} CPU thread(s) each" in caplog.text

    with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
        _with_cpu_threads(specs, dataclasses.replace(settings, cpu_threads=0))
