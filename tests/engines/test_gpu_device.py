"""What a host says about its GPU. The UUID text form runs everywhere; the rest needs an
NVIDIA GPU (``gpu`` marker, never in CI): the driver's UUID of the host's one device must be
NVML's UUID of the card it was pinned to, and a CUDA build of llama-cpp-python must report
CUDA on that card and allocate through it."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.cuda_uuid import cuda_device_uuid, format_uuid

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120


def test_uuids_read_as_nvml_writes_them() -> None:
    raw = bytes.fromhex("5a1bc0de00112233445566778899aabb")
    assert format_uuid(raw) == "GPU-5a1bc0de-0011-2233-4455-66778899aabb"


def test_without_a_driver_there_is_no_uuid() -> None:
    if ctypes.util.find_library("cuda") is not None:
        pytest.skip("an NVIDIA driver is installed here")
    assert cuda_device_uuid() == ""


def _first_nvml_uuid() -> str:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver: {exc}")
    try:
        uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(0))
    finally:
        pynvml.nvmlShutdown()
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def _pinned_child(code: str, uuid: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ) | {"CUDA_VISIBLE_DEVICES": uuid}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


@pytest.mark.gpu
def test_a_host_pinned_by_uuid_reads_that_uuid() -> None:
    uuid = _first_nvml_uuid()
    done = _pinned_child("from engines.cuda_uuid import cuda_device_uuid as u; print(u())", uuid)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == uuid


@pytest.mark.gpu
def test_a_cuda_llama_build_reports_and_probes_its_card() -> None:
    uuid = _first_nvml_uuid()
    code = (
        "import llama_cpp, sys\n"
        "if not llama_cpp.llama_supports_gpu_offload(): sys.exit(3)\n"
        "from pathlib import Path\n"
        "from engines.llama import LlamaEngine\n"
        "engine = LlamaEngine(Path('/nonexistent'))\n"
        "device = engine.compute_device()\n"
        "print(device.backend, device.uuid)\n"
        "print(engine.probe_device(64 * 2**20))\n"
    )
    done = _pinned_child(code, uuid)
    if done.returncode == 3:
        pytest.skip("llama-cpp-python here is a CPU build")
    assert done.returncode == 0, done.stderr
    reported, probe = done.stdout.splitlines()[:2]
    assert reported == f"cuda {uuid}"
    assert probe.startswith("cuda ") and probe.endswith("allocated and freed 64.00 MiB")
