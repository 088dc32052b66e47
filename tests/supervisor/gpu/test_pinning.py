"""Which card each ``engine@N`` gets and what its host is told, as tables: no inherited
``CUDA_VISIBLE_DEVICES``, every form of an inherited one, N out of range, the Vulkan index by
UUID, and the index environment kept for machines without NVML."""

from __future__ import annotations

import pytest

from supervisor.gpu.facts import DeviceIndexError, GpuDevice
from supervisor.gpu.pinning import (
    HostPin,
    describe_devices,
    host_gpu_env,
    index_env,
    pin_slots,
    visible_devices,
    visible_entries,
)
from supervisor.gpu.vulkan_order import VulkanDevice, uuid_key

UUIDS = [
    "GPU-aaaaaaaa-0000-4000-8000-000000000000",
    "GPU-bbbbbbbb-0000-4000-8000-000000000001",
    "GPU-bbbbcccc-0000-4000-8000-000000000002",
]
DEVICES = [
    GpuDevice(index=i, name=f"NVIDIA H200 #{i}", uuid=u, total_bytes=2**37, used_bytes=0)
    for i, u in enumerate(UUIDS)
]


def cards(inherited: str | None) -> list[int]:
    return [d.index for d in visible_devices(DEVICES, inherited)]


@pytest.mark.parametrize(
    ("inherited", "expected"),
    [
        (None, [0, 1, 2]),  # unset: every card, by NVML index
        ("", []),  # set and empty: CUDA sees no card
        ("2,0", [2, 0]),  # engine@0 is card 2
        (" 1 , 0 ", [1, 0]),
        ("1,-1,2", [1]),  # CUDA stops at the first invalid entry
        ("-1", []),
        ("1,,2", [1]),
        (UUIDS[2], [2]),
        (UUIDS[1].upper(), [1]),
        ("GPU-aaaa", [0]),  # a unique prefix, as CUDA takes it
        (f"{UUIDS[2]},1", [2, 1]),  # indices and UUIDs mixed
        ("GPU-bbbbbbbb", [1]),
    ],
)
def test_visible_devices(inherited: str | None, expected: list[int]) -> None:
    assert cards(inherited) == expected


@pytest.mark.parametrize(
    ("inherited", "message"),
    [
        ("3", "names GPU 3, but NVML sees 3 GPU"),
        ("0,7", "names GPU 7"),
        ("GPU-ffffffff-0000-4000-8000-000000000000", "matches no GPU"),
        ("GPU-bbbb", "start of more than one GPU's UUID"),
        ("MIG-12345678-0000-4000-8000-000000000000", "MIG instance"),
        ("0,0", "names GPU 0 .* twice"),
        (f"1,{UUIDS[1]}", "names GPU 1 .* twice"),
    ],
)
def test_inherited_entries_that_name_no_single_card(inherited: str, message: str) -> None:
    with pytest.raises(DeviceIndexError, match=message) as caught:
        pin_slots(DEVICES, [("sdcpp", 0)], inherited=inherited, vulkan_order=None)
    assert f"inherited CUDA_VISIBLE_DEVICES={inherited!r}" in str(caught.value)


def test_a_mig_instance_the_source_lists_is_matched() -> None:
    mig = GpuDevice(0, "MIG 1g.18gb", "MIG-12345678-0000-4000-8000-000000000000", 2**34, 0)
    assert visible_devices([mig], mig.uuid) == [mig]


@pytest.mark.parametrize(
    ("value", "entries"),
    [("", []), ("0,1", ["0", "1"]), ("GPU-x, MIG-y", ["GPU-x", "MIG-y"]), ("a,0", [])],
)
def test_visible_entries(value: str, entries: list[str]) -> None:
    assert visible_entries(value) == entries


@pytest.mark.parametrize(
    ("inherited", "slot", "present"),
    [
        (None, 3, "3 GPU(s): 0 NVIDIA H200 #0"),
        ("2,0", 2, f"2 GPU(s): 2 NVIDIA H200 #2 {UUIDS[2]}, 0 NVIDIA H200 #0"),
        ("", 0, "no GPU (the inherited CUDA_VISIBLE_DEVICES='' is counted from 0)"),
        (UUIDS[1], 1, f"1 GPU(s): 1 NVIDIA H200 #1 {UUIDS[1]} (the inherited"),
    ],
)
def test_engine_at_n_beyond_the_cards(inherited: str | None, slot: int, present: str) -> None:
    with pytest.raises(DeviceIndexError) as caught:
        pin_slots(DEVICES, [("llama", 0), ("llama", slot)], inherited=inherited, vulkan_order=[])
    message = str(caught.value)
    assert message.startswith(f"`llama@{slot}` names GPU {slot}, but this machine has {present}")
    assert message.endswith("fix --engines or the config's `engines`")


def test_describe_devices_names_what_is_there() -> None:
    assert describe_devices([]) == "no GPU"
    assert describe_devices(DEVICES[:1]) == f"1 GPU(s): 0 NVIDIA H200 #0 {UUIDS[0]}"


# --- the host's environment ---------------------------------------------------------------------

# The Vulkan loader lists an integrated GPU first and card 1 before card 0; card 2 has no
# Vulkan driver. So Vulkan indices differ from NVML's on purpose.
VULKAN = [
    VulkanDevice(0, "Intel(R) Graphics", "868088a7040000000002000000000000"),
    VulkanDevice(1, "NVIDIA H200 #1", uuid_key(UUIDS[1])),
    VulkanDevice(2, "NVIDIA H200 #0", uuid_key(UUIDS[0])),
    VulkanDevice(3, "llvmpipe", "6d657361323332e322e3100000000000"),
]


def test_pins_by_uuid_with_the_vulkan_index() -> None:
    pins = pin_slots(
        DEVICES, [("sdcpp", 0), ("llama", 1), ("sdcpp", 1)], inherited=None, vulkan_order=VULKAN
    )
    assert sorted(pins) == [0, 1]
    assert pins[0] == HostPin(0, DEVICES[0], 2)
    assert pins[0].env == {
        "CUDA_VISIBLE_DEVICES": UUIDS[0],
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "GGML_VK_VISIBLE_DEVICES": "2",
    }
    assert pins[1].env["GGML_VK_VISIBLE_DEVICES"] == "1"


def test_inherited_order_decides_the_card_not_the_environment() -> None:
    pins = pin_slots(DEVICES, [("llama", 0)], inherited="1", vulkan_order=VULKAN)
    assert pins[0].device is DEVICES[1]
    assert pins[0].env["CUDA_VISIBLE_DEVICES"] == UUIDS[1]  # the UUID, never the index "1"


@pytest.mark.parametrize(
    ("vulkan_order", "note"),
    [(None, "Vulkan device order is unknown"), (VULKAN, "no Vulkan device has the UUID")],
)
def test_no_vulkan_index_leaves_the_variable_out(
    vulkan_order: list[VulkanDevice] | None, note: str
) -> None:
    (pin,) = pin_slots(DEVICES, [("llama", 2)], inherited=None, vulkan_order=vulkan_order).values()
    assert pin.vulkan_index is None
    assert note in pin.vulkan_note
    assert pin.env == {"CUDA_VISIBLE_DEVICES": UUIDS[2], "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_host_gpu_env_without_nvml_or_on_the_default_device() -> None:
    assert host_gpu_env(None, None) == {}
    assert (
        host_gpu_env(1, None)
        == index_env(1)
        == {
            "CUDA_VISIBLE_DEVICES": "1",
            "HIP_VISIBLE_DEVICES": "1",
            "ROCR_VISIBLE_DEVICES": "1",
            "GGML_VK_VISIBLE_DEVICES": "1",
        }
    )
    pin = HostPin(1, DEVICES[1], None)
    assert host_gpu_env(1, pin) == pin.env
