"""The NVML source on a real NVIDIA card (``-m gpu``; never in CI): the facts it reads are
what NVML is known to report, the supervisor picks it when no simulation is asked for, and
every card pins to its own UUID."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from supervisor.gpu.governor import GpuGovernor
from supervisor.gpu.nvml_source import NvmlGpuSource, open_nvml
from supervisor.gpu.pinning import CUDA_DEVICE_ORDER, CUDA_VISIBLE_DEVICES, pin_slots
from supervisor.gpu.slot_contract import GpuSettings
from supervisor.gpu.sources import open_gpu_source

pytestmark = pytest.mark.gpu

UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def nvml() -> Iterator[NvmlGpuSource]:
    source = open_nvml()
    assert source is not None, "NVML did not initialise on a machine marked as having a GPU"
    yield source
    source.close()


def test_facts_of_every_card(nvml: NvmlGpuSource) -> None:
    devices = nvml.read()
    assert devices, "NVML initialised but reports no card"
    assert [d.index for d in devices] == list(range(len(devices)))
    assert len({d.uuid for d in devices}) == len(devices)
    for d in devices:
        assert UUID.match(d.uuid), d.uuid
        assert d.name
        assert re.match(r"^\d+\.\d+", d.driver), d.driver
        assert d.total_bytes > d.used_bytes >= 0
        assert d.free_bytes == d.total_bytes - d.used_bytes
        if d.processes is not None:
            assert all(pid > 0 and used >= 0 for pid, used in d.processes.items())
    assert GpuGovernor(None, devices, GpuSettings()).total_gb() > 0


def test_xid_poll_answers_at_once(nvml: NvmlGpuSource) -> None:
    count = len(nvml.read())
    events = nvml.poll_xid_events()  # a healthy card has none queued; the call must not wait
    assert all(0 <= e.device_index < count for e in events)


def test_the_supervisor_picks_nvml_without_a_simulation() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_WORKER_SIMULATED_GPUS"}
    source = open_gpu_source(env)
    assert source is not None
    try:
        assert source.kind == "nvml"
    finally:
        source.close()


def test_each_card_pins_by_its_uuid(nvml: NvmlGpuSource) -> None:
    devices = nvml.read()
    slots = [("llama", n) for n in range(len(devices))]
    pins = pin_slots(devices, slots, inherited=None, vulkan_order=None)
    for n, device in enumerate(devices):
        env = pins[n].env
        assert env[CUDA_VISIBLE_DEVICES] == device.uuid
        assert env[CUDA_DEVICE_ORDER] == "PCI_BUS_ID"
