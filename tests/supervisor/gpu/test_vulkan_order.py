"""The Vulkan device order from ``vulkaninfo --summary``: the parser on a captured sample in
the tool's real layout, the NVML-to-Vulkan mapping by UUID, and the runner against real
executables standing in for the tool (present, failing, silent, hanging, absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.gpu.facts import GpuDevice
from supervisor.gpu.vulkan_order import (
    VulkanDevice,
    parse_vulkaninfo_summary,
    read_vulkan_order,
    uuid_key,
    vulkan_index_for,
)

# The layout of vulkaninfo 1.3's --summary (Vulkan-Tools' DumpSummaryInstance/DumpSummaryGPU):
# the instance sections, then "Devices:" with one unindented "GPUn:" block per physical
# device, its fields tab-indented. An integrated GPU comes first and the two NVIDIA cards are
# in the loader's order, not PCI order, as on a real mixed machine.
SUMMARY = """\
==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.275


Instance Extensions: count = 3
-------------------------------
VK_EXT_debug_report                    : extension revision 10
VK_EXT_debug_utils                     : extension revision 2
VK_KHR_surface                         : extension revision 25

Instance Layers: count = 2
--------------------------
VK_LAYER_MESA_device_select Linux device selection layer 1.3.211  version 1
VK_LAYER_NV_optimus         NVIDIA Optimus layer         1.3.277  version 1

Devices:
========
GPU0:
\tapiVersion         = 1.3.255
\tdriverVersion      = 23.2.1
\tvendorID           = 0x8086
\tdeviceID           = 0xa780
\tdeviceType         = PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU
\tdeviceName         = Intel(R) Graphics (RPL-S)
\tdriverID           = DRIVER_ID_INTEL_OPEN_SOURCE_MESA
\tdriverName         = Intel open-source Mesa driver
\tdriverInfo         = Mesa 23.2.1-1ubuntu3.1~22.04.2
\tconformanceVersion = 1.3.0.0
\tdeviceUUID         = 868080a7-0400-0000-0002-000000000000
\tdriverUUID         = 032fbbbb-ddee-3516-8477-c17071969177
GPU1:
\tapiVersion         = 1.3.277
\tdriverVersion      = 550.54.14.0
\tvendorID           = 0x10de
\tdeviceID           = 0x2335
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA H200
\tdriverID           = DRIVER_ID_NVIDIA_PROPRIETARY
\tdriverName         = NVIDIA
\tdriverInfo         = 550.54.14
\tconformanceVersion = 1.3.7.2
\tdeviceUUID         = 3d28c8d2-dcc3-dcb6-1da6-5a521f0bcd6d
\tdriverUUID         = 5d948742-de2b-5e32-9692-c2a5621aed9a
GPU2:
\tapiVersion         = 1.3.277
\tdriverVersion      = 550.54.14.0
\tvendorID           = 0x10de
\tdeviceID           = 0x2335
\tdeviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
\tdeviceName         = NVIDIA H200
\tdriverID           = DRIVER_ID_NVIDIA_PROPRIETARY
\tdriverName         = NVIDIA
\tdriverInfo         = 550.54.14
\tconformanceVersion = 1.3.7.2
\tdeviceUUID         = b5291141-3ff6-f8bf-c85d-2f8e52fc144d
\tdriverUUID         = 5d948742-de2b-5e32-9692-c2a5621aed9a
GPU3:
\tapiVersion         = 1.3.255
\tdriverVersion      = 0.0.1
\tvendorID           = 0x10005
\tdeviceID           = 0x0000
\tdeviceType         = PHYSICAL_DEVICE_TYPE_CPU
\tdeviceName         = llvmpipe (LLVM 15.0.7, 256 bits)
\tdriverID           = DRIVER_ID_MESA_LLVMPIPE
\tdriverName         = llvmpipe
\tdriverInfo         = Mesa 23.2.1-1ubuntu3.1~22.04.2 (LLVM 15.0.7)
\tconformanceVersion = 1.3.1.1
\tdeviceUUID         = 6d657361-3233-2e32-2e31-2d3175627500
\tdriverUUID         = 6c6c766d-7069-7065-5555-494400000000
"""

# The NVML side of the two NVIDIA cards: card 0 (lower PCI bus) is Vulkan's GPU2.
CARD0 = GpuDevice(0, "NVIDIA H200", "GPU-b5291141-3ff6-f8bf-c85d-2f8e52fc144d", 2**37, 0)
CARD1 = GpuDevice(1, "NVIDIA H200", "GPU-3d28c8d2-dcc3-dcb6-1da6-5a521f0bcd6d", 2**37, 0)


def test_parses_every_device_in_order() -> None:
    devices = parse_vulkaninfo_summary(SUMMARY)
    assert [(d.index, d.name) for d in devices] == [
        (0, "Intel(R) Graphics (RPL-S)"),
        (1, "NVIDIA H200"),
        (2, "NVIDIA H200"),
        (3, "llvmpipe (LLVM 15.0.7, 256 bits)"),
    ]
    assert devices[1] == VulkanDevice(
        1, "NVIDIA H200", "3d28c8d2dcc3dcb61da65a521f0bcd6d", "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU"
    )
    assert devices[3].device_type == "PHYSICAL_DEVICE_TYPE_CPU"


def test_maps_nvml_cards_by_uuid_not_by_index() -> None:
    order = parse_vulkaninfo_summary(SUMMARY)
    assert vulkan_index_for(CARD0, order) == 2
    assert vulkan_index_for(CARD1, order) == 1
    unknown = GpuDevice(2, "NVIDIA H200", "GPU-00000000-1111-2222-3333-444444444444", 1, 0)
    assert vulkan_index_for(unknown, order) is None


def test_same_card_listed_twice_takes_the_first() -> None:
    twice = [VulkanDevice(0, "a", uuid_key(CARD0.uuid)), VulkanDevice(1, "b", uuid_key(CARD0.uuid))]
    assert vulkan_index_for(CARD0, twice) == 0


def test_spaces_and_crlf_indentation_parse_too() -> None:
    text = SUMMARY.replace("\t", "        ").replace("\n", "\r\n")
    assert [d.uuid_key for d in parse_vulkaninfo_summary(text)] == [
        d.uuid_key for d in parse_vulkaninfo_summary(SUMMARY)
    ]


def test_an_old_vulkaninfo_without_uuids_maps_nothing() -> None:
    old = "\n".join(line for line in SUMMARY.splitlines() if "UUID" not in line)
    order = parse_vulkaninfo_summary(old)
    assert len(order) == 4
    assert all(d.uuid_key == "" for d in order)
    assert vulkan_index_for(CARD0, order) is None


@pytest.mark.parametrize(
    "text",
    ["", "ERROR: [Loader Message] Code 0 : vkCreateInstance: Found no drivers!\n", "Devices:\n"],
)
def test_no_device_listed(text: str) -> None:
    assert parse_vulkaninfo_summary(text) == []


def test_a_section_after_the_devices_ends_the_last_one() -> None:
    text = SUMMARY + "Presentable Surfaces:\n=====================\n\tdeviceName = not a GPU\n"
    assert parse_vulkaninfo_summary(text)[-1].name == "llvmpipe (LLVM 15.0.7, 256 bits)"


@pytest.mark.parametrize(
    ("uuid", "key"),
    [
        ("GPU-3d28c8d2-dcc3-dcb6-1da6-5a521f0bcd6d", "3d28c8d2dcc3dcb61da65a521f0bcd6d"),
        ("3D28C8D2-DCC3-DCB6-1DA6-5A521F0BCD6D", "3d28c8d2dcc3dcb61da65a521f0bcd6d"),
        ("GPU-3d28c8d2", ""),
        ("", ""),
        ("not-a-uuid", ""),
    ],
)
def test_uuid_key(uuid: str, key: str) -> None:
    assert uuid_key(uuid) == key


# --- the runner ---------------------------------------------------------------------------------


def fake_vulkaninfo(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "vulkaninfo"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only the stand-in tool (and no real vulkaninfo)."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def test_runs_the_tool_and_parses_it(tmp_path: Path, bin_dir: Path) -> None:
    sample = tmp_path / "summary.txt"
    sample.write_text(SUMMARY)
    fake_vulkaninfo(bin_dir, f'[ "$1" = --summary ] || exit 2\nexec /bin/cat "{sample}"')
    order = read_vulkan_order()
    assert order is not None
    assert [d.index for d in order] == [0, 1, 2, 3]


def test_a_listing_counts_even_when_the_tool_fails(tmp_path: Path, bin_dir: Path) -> None:
    sample = tmp_path / "summary.txt"
    sample.write_text(SUMMARY)
    fake_vulkaninfo(bin_dir, f'/bin/cat "{sample}"\nexit 1')
    order = read_vulkan_order()
    assert order is not None and len(order) == 4


def test_no_order_without_a_listing(bin_dir: Path) -> None:
    fake_vulkaninfo(bin_dir, "echo 'Cannot create Vulkan instance.' >&2\nexit 1")
    assert read_vulkan_order() is None


def test_no_order_when_the_tool_hangs(bin_dir: Path) -> None:
    fake_vulkaninfo(bin_dir, "exec /bin/sleep 60")
    assert read_vulkan_order(timeout_s=0.5) is None


def test_no_order_without_the_tool(bin_dir: Path) -> None:
    assert read_vulkan_order() is None
