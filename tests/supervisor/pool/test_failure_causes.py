"""Why a host died and whether its device is suspect (tables), and the cgroup's OOM-kill
counter read from directory trees laid out like /sys/fs/cgroup (v2, hybrid, v1, missing)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from supervisor.pool.failure_causes import (
    classify_host_loss,
    is_device_fault,
    parse_oom_kill,
    read_oom_kill_count,
)
from supervisor.pool.verdict import LossCause

KILL = -signal.SIGKILL
SEGV = -signal.SIGSEGV
ABRT = -signal.SIGABRT
BUS = -signal.SIGBUS
TERM = -signal.SIGTERM

CUDA_OOM = [
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1024.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 1073741824",
]
CPU_OOM = [
    "ggml_aligned_malloc: insufficient memory (attempted to allocate 4096.00 MB)",
    "alloc_tensor_range: failed to allocate CPU buffer of size 4294967296",
]
ILLEGAL_ACCESS = [
    "CUDA error: an illegal memory access was encountered",
    "  current device: 0, in function ggml_backend_cuda_synchronize at ggml-cuda.cu:3067",
    "  cudaStreamSynchronize(cuda_ctx->stream())",
    "/src/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error",
]
NOISE = ["load_tensors:        CPU buffer size =  5679.33 MiB", "generating..."]


@pytest.mark.parametrize(
    ("returncode", "we_killed", "tail", "grew", "cause"),
    [
        # the engine's words first: a ggml OOM may abort, exit or be SIGKILLed after
        (ABRT, False, CUDA_OOM, False, LossCause.VRAM_OOM),
        (1, False, CUDA_OOM, False, LossCause.VRAM_OOM),
        (KILL, False, CUDA_OOM, True, LossCause.VRAM_OOM),
        (SEGV, False, NOISE + CUDA_OOM + ILLEGAL_ACCESS, False, LossCause.VRAM_OOM),
        # the kernel's OOM killer: an unsent SIGKILL while the counter grew
        (KILL, False, NOISE, True, LossCause.RAM_OOM),
        (KILL, False, [], True, LossCause.RAM_OOM),
        # ... not when the supervisor sent the kill, nor without the counter's word
        (KILL, True, NOISE, True, LossCause.SIGNAL),
        (KILL, False, NOISE, False, LossCause.SIGNAL),
        # a host-memory text
        (ABRT, False, CPU_OOM, False, LossCause.RAM_OOM),
        (1, False, ["Traceback (most recent call last):", "MemoryError"], False, LossCause.RAM_OOM),
        # otherwise by the signal, or the exit
        (SEGV, False, NOISE, False, LossCause.SIGNAL),
        (ABRT, False, ILLEGAL_ACCESS, False, LossCause.SIGNAL),
        (TERM, False, [], True, LossCause.SIGNAL),
        (3, False, NOISE, True, LossCause.EXIT),
        (0, False, [], False, LossCause.EXIT),
    ],
)
def test_classify_host_loss(
    returncode: int, we_killed: bool, tail: list[str], grew: bool, cause: LossCause
) -> None:
    got = classify_host_loss(
        returncode=returncode, we_killed=we_killed, stderr_tail=tail, oom_kills_grew=grew
    )
    assert got is cause


@pytest.mark.parametrize(
    ("returncode", "tail", "reason"),
    [
        (SEGV, NOISE, "died by SIGSEGV"),
        (BUS, [], "died by SIGBUS"),
        (ABRT, NOISE, "died by SIGABRT"),
        (
            ABRT,
            ILLEGAL_ACCESS,
            "device error: CUDA error: an illegal memory access was encountered",
        ),
        # a device error in a failed job's text, the host still running
        (
            None,
            ["CUDA error: unspecified launch failure"],
            "device error: CUDA error: unspecified launch failure",
        ),
        (
            1,
            ["ggml_vulkan: vk::Queue::submit: ErrorDeviceLost"],
            "device error: ggml_vulkan: vk::Queue::submit: ErrorDeviceLost",
        ),
        # an OOM before the fault does not excuse a device error
        (
            ABRT,
            CUDA_OOM + ILLEGAL_ACCESS,
            "device error: CUDA error: an illegal memory access was encountered",
        ),
        # out of memory is no fault of the device, whatever signal follows
        (ABRT, CUDA_OOM, None),
        (SEGV, CPU_OOM, None),
        # not a native fault
        (KILL, NOISE, None),
        (TERM, NOISE, None),
        (1, NOISE, None),
        (0, [], None),
        (None, NOISE, None),
        (-200, [], None),  # no such signal
    ],
)
def test_is_device_fault(returncode: int | None, tail: list[str], reason: str | None) -> None:
    assert is_device_fault(returncode, tail) == reason


def test_a_device_fault_reason_is_kept_short() -> None:
    reason = is_device_fault(SEGV, ["CUDA error: unspecified launch failure " + "x" * 1000])
    assert reason is not None
    assert len(reason) <= len("device error: ") + 200


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n", 2),  # v2 memory.events
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n", 7),  # v1 memory.oom_control
        ("oom_kill_disable 0\nunder_oom 0\n", None),  # v1 before Linux 4.13
        ("oom_group_kill 4\n", None),
        ("oom_kill many\n", None),
        ("", None),
    ],
)
def test_parse_oom_kill(text: str, count: int | None) -> None:
    assert parse_oom_kill(text) == count


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _events(count: int) -> str:
    return f"low 0\nhigh 0\nmax 0\noom 1\noom_kill {count}\noom_group_kill 0\n"


def test_v2_counter_of_the_process_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "0::/system.slice/studio-worker.service\n")
    _write(root / "system.slice" / "memory.events", _events(9))
    counter = _write(root / "system.slice" / "studio-worker.service" / "memory.events", _events(1))
    assert read_oom_kill_count(root, proc) == 1
    counter.write_text(_events(2))  # the kernel took a host
    assert read_oom_kill_count(root, proc) == 2


def test_v2_falls_back_to_the_nearest_ancestor_with_a_counter(tmp_path: Path) -> None:
    # The memory controller is not enabled for the leaf: its parent counts the leaf's kills.
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "0::/a/b/c\n")
    (root / "a" / "b" / "c").mkdir(parents=True)
    _write(root / "a" / "b" / "memory.events", _events(4))
    _write(root / "a" / "memory.events", _events(40))
    assert read_oom_kill_count(root, proc) == 4


def test_v2_inside_a_cgroup_namespace_reads_its_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "0::/\n")
    _write(root / "memory.events", _events(5))
    assert read_oom_kill_count(root, proc) == 5


def test_a_cgroup_outside_the_namespace_view_has_no_counter(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "0::/../../other.slice\n")
    _write(root / "memory.events", _events(5))  # someone else's kills, not ours
    assert read_oom_kill_count(root, proc) is None


def test_hybrid_reads_the_v1_memory_controller(tmp_path: Path) -> None:
    # systemd's hybrid layout: cgroup2 on unified/ without the memory controller.
    root = tmp_path / "cgroup"
    proc = _write(
        tmp_path / "proc_cgroup",
        "12:memory:/user.slice/session-3.scope\n"
        "4:cpu,cpuacct:/user.slice\n"
        "1:name=systemd:/user.slice/session-3.scope\n"
        "0::/user.slice/session-3.scope\n",
    )
    (root / "unified" / "user.slice" / "session-3.scope").mkdir(parents=True)
    _write(root / "unified" / "user.slice" / "cgroup.procs", "")
    _write(
        root / "memory" / "user.slice" / "session-3.scope" / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    assert read_oom_kill_count(root, proc) == 3


def test_v1_only(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "9:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(root / "memory" / "docker" / "abc" / "memory.oom_control", "oom_kill 0\n")
    assert read_oom_kill_count(root, proc) == 0


def test_v1_never_reads_an_ancestor(tmp_path: Path) -> None:
    # v1 counts a kill only in the victim's own cgroup: the root's counter is someone else's.
    # (A container whose memory path its mount does not show looks like this.)
    root = tmp_path / "cgroup"
    proc = _write(tmp_path / "proc_cgroup", "4:memory:/process_api/c4c3\n0::/\n")
    _write(root / "memory" / "memory.oom_control", "oom_kill 6\n")
    (root / "unified").mkdir()
    assert read_oom_kill_count(root, proc) is None


def test_missing_or_unreadable_counters_are_none(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    assert read_oom_kill_count(root, tmp_path / "no_such_proc_file") is None
    proc = _write(tmp_path / "proc_cgroup", "0::/a\n9:memory:/a\n")
    assert read_oom_kill_count(root, proc) is None  # no cgroup tree at all
    _write(root / "a" / "memory.events", "low 0\nhigh 0\n")  # a kernel without the key
    assert read_oom_kill_count(root, proc) is None
    _write(tmp_path / "empty_proc", "")
    assert read_oom_kill_count(root, tmp_path / "empty_proc") is None


def test_this_machine_gives_a_count_or_none() -> None:
    count = read_oom_kill_count()
    assert count is None or count >= 0
