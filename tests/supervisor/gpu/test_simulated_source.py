"""The simulated cards against real files and real processes: a live host's allocation file
counts, a dead one's (reaped or zombie) does not, nor one whose pid a newer process got;
``per_process: false`` hides the split; every read sees the files as they are now; a bad
devices file is a ``GpuReadError``. Also which source ``open_gpu_source`` picks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engines.simulated_gpu import ALLOC_DIR_ENV, CONFIG_ENV, MIB
from supervisor.gpu.facts import GpuReadError
from supervisor.gpu.simulated_source import SimulatedGpuSource
from supervisor.gpu.sources import open_gpu_source

UUID_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
UUID_B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"

# A stand-in engine host: records what it holds on its device for its own pid, says so on
# stdout, then holds it until its stdin closes or it is killed.
HOST_SCRIPT = """
import os
import sys
from pathlib import Path
from engines.simulated_gpu import HostAllocations, write_allocations
alloc_dir, uuid, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
write_allocations(Path(alloc_dir), HostAllocations(os.getpid(), uuid, {"model": size}))
print("ready", flush=True)
sys.stdin.readline()
"""

StartHost = Callable[[str, int], subprocess.Popen[str]]


def write_devices(path: Path, *devices: dict[str, Any]) -> None:
    path.write_text(json.dumps({"devices": list(devices)}))


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedGpuSource:
    config = tmp_path / "gpus.json"
    write_devices(
        config,
        {"index": 0, "name": "Sim 24G", "total_mib": 24576, "foreign_mib": 1024, "uuid": UUID_A},
        {"index": 1, "name": "Sim 12G", "total_mib": 12288, "uuid": UUID_B},
    )
    return SimulatedGpuSource(config, tmp_path / "alloc")


@pytest.fixture
def start_host(sim: SimulatedGpuSource) -> Iterator[StartHost]:
    """Start hosts that allocate; every one is killed and reaped at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(uuid: str, size: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT, str(sim.alloc_dir), uuid, str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_devices_come_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gpus.json"
    write_devices(
        config,
        {"index": 1, "name": "Second", "total_mib": 8192},
        {"index": 0, "name": "First", "total_mib": 4096, "foreign_mib": 512, "uuid": UUID_A},
    )
    first, second = SimulatedGpuSource(config, tmp_path / "alloc").read()
    assert (first.index, first.name, first.uuid) == (0, "First", UUID_A)
    assert (first.total_bytes, first.used_bytes, first.free_bytes) == (
        4096 * MIB,
        512 * MIB,
        3584 * MIB,
    )
    assert first.driver == "simulated"
    assert first.processes == {}
    assert (second.index, second.name) == (1, "Second")
    assert second.uuid == "GPU-00000000-0000-4000-8000-000000000001"  # made from the index


def test_a_live_host_counts_until_it_is_killed_and_reaped(
    sim: SimulatedGpuSource, start_host: StartHost
) -> None:
    host = start_host(UUID_A, 3 * MIB)
    a, b = sim.read()
    assert a.used_bytes == 1024 * MIB + 3 * MIB
    assert a.processes == {host.pid: 3 * MIB}
    assert (b.used_bytes, b.processes) == (0, {})  # another card's allocation is not this one's

    host.kill()
    host.wait(timeout=10)
    a, _ = sim.read()
    assert a.used_bytes == 1024 * MIB
    assert a.processes == {}


def test_a_zombie_host_does_not_count(sim: SimulatedGpuSource, start_host: StartHost) -> None:
    host = start_host(UUID_B, 5 * MIB)
    host.kill()
    # Wait for the exit without reaping: the host stays a zombie while we read.
    os.waitid(os.P_PID, host.pid, os.WEXITED | os.WNOWAIT)
    _, b = sim.read()
    assert b.used_bytes == 0
    assert b.processes == {}


def test_hosts_on_one_card_add_up(sim: SimulatedGpuSource, start_host: StartHost) -> None:
    one = start_host(UUID_B, 2 * MIB)
    two = start_host(UUID_B, 7 * MIB)
    _, b = sim.read()
    assert b.used_bytes == 9 * MIB
    assert b.processes == {one.pid: 2 * MIB, two.pid: 7 * MIB}


def test_per_process_false_hides_the_split_not_the_memory(
    tmp_path: Path, sim: SimulatedGpuSource, start_host: StartHost
) -> None:
    write_devices(
        sim.config_path,
        {"index": 0, "name": "Boxed", "total_mib": 1024, "uuid": UUID_A, "per_process": False},
    )
    start_host(UUID_A, 4 * MIB)
    (device,) = sim.read()
    assert device.used_bytes == 4 * MIB
    assert device.processes is None


def test_every_read_sees_the_file_as_it_is_now(sim: SimulatedGpuSource) -> None:
    assert sim.read()[0].used_bytes == 1024 * MIB
    write_devices(
        sim.config_path,
        {"index": 0, "name": "Sim 24G", "total_mib": 24576, "foreign_mib": 20000, "uuid": UUID_A},
    )
    (device,) = sim.read()
    assert device.used_bytes == 20000 * MIB
    assert device.free_bytes == (24576 - 20000) * MIB


def test_a_file_older_than_its_process_is_a_reused_pid(
    sim: SimulatedGpuSource, start_host: StartHost
) -> None:
    host = start_host(UUID_A, 3 * MIB)
    record = sim.alloc_dir / f"{host.pid}.json"
    an_hour_ago = time.time() - 3600
    os.utime(record, (an_hour_ago, an_hour_ago))  # written long before this process started
    a, _ = sim.read()
    assert a.used_bytes == 1024 * MIB
    assert a.processes == {}


def test_unreadable_allocation_files_are_skipped(
    sim: SimulatedGpuSource, start_host: StartHost
) -> None:
    host = start_host(UUID_A, 3 * MIB)
    (sim.alloc_dir / "123.json").write_text("{not json")
    (sim.alloc_dir / "124.json").write_text(json.dumps({"pid": 124, "unknown": 1}))
    a, _ = sim.read()
    assert a.processes == {host.pid: 3 * MIB}


def test_no_allocation_directory_yet_is_no_allocation(sim: SimulatedGpuSource) -> None:
    assert not sim.alloc_dir.exists()
    assert [d.used_bytes for d in sim.read()] == [1024 * MIB, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid"),
        (json.dumps({"gpus": []}), "is not valid"),
        (json.dumps({"devices": [{"index": 0, "name": "x"}]}), "is not valid"),
        (json.dumps({"devices": [{"index": 0, "name": "x", "total_mib": 1, "vram": 1}]}), "valid"),
        (json.dumps({"devices": [{"index": 1, "name": "x", "total_mib": 1}]}), "0..N-1"),
        (
            json.dumps(
                {
                    "devices": [
                        {"index": 0, "name": "x", "total_mib": 1, "uuid": UUID_A},
                        {"index": 1, "name": "y", "total_mib": 1, "uuid": UUID_A},
                    ]
                }
            ),
            "UUIDs must be unique",
        ),
        (json.dumps({"devices": [{"index": 0, "name": "x", "total_mib": 0}]}), "total_mib > 0"),
        (
            json.dumps({"devices": [{"index": 0, "name": "x", "total_mib": 8, "foreign_mib": -1}]}),
            "foreign_mib >= 0",
        ),
    ],
)
def test_a_malformed_devices_file_is_a_read_error(
    sim: SimulatedGpuSource, content: str, message: str
) -> None:
    sim.config_path.write_text(content)
    with pytest.raises(GpuReadError, match=message) as caught:
        sim.read()
    assert str(sim.config_path) in str(caught.value)


def test_a_missing_devices_file_is_a_read_error(tmp_path: Path) -> None:
    with pytest.raises(GpuReadError, match="cannot read"):
        SimulatedGpuSource(tmp_path / "nope.json", tmp_path).read()


# --- open_gpu_source ----------------------------------------------------------------------------


def test_simulated_cards_when_the_variable_names_a_file(sim: SimulatedGpuSource) -> None:
    env = {CONFIG_ENV: str(sim.config_path), ALLOC_DIR_ENV: str(sim.alloc_dir)}
    source = open_gpu_source(env)
    assert source is not None
    try:
        assert source.kind == "simulated"
        assert [d.uuid for d in source.read()] == [UUID_A, UUID_B]
        assert source.poll_xid_events() == []
    finally:
        source.close()


def test_a_bad_simulation_fails_at_open(tmp_path: Path) -> None:
    bad = tmp_path / "gpus.json"
    bad.write_text("[]")
    with pytest.raises(GpuReadError, match="is not valid"):
        open_gpu_source({CONFIG_ENV: str(bad), ALLOC_DIR_ENV: str(tmp_path)})
    with pytest.raises(GpuReadError, match=ALLOC_DIR_ENV):
        open_gpu_source({CONFIG_ENV: str(bad)})


def test_no_source_without_simulation_or_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the bindings do not import
    assert open_gpu_source({}) is None
    assert open_gpu_source({CONFIG_ENV: ""}) is None
