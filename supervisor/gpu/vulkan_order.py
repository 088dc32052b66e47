"""The Vulkan loader's device order, which ``GGML_VK_VISIBLE_DEVICES`` indexes: it is not
CUDA's or NVML's order (integrated GPUs and software renderers such as llvmpipe are listed
too, in the loader's own order). Read once at start from ``vulkaninfo --summary``, whose
device list gives each GPU its index (``GPU0:``) and its ``deviceUUID``; an NVIDIA card's
Vulkan UUID is its NVML UUID without the ``GPU-`` prefix. The parser is pure; the runner is
the only I/O and answers None wherever the order cannot be read. Nothing here decides which
card a host gets.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from supervisor.gpu.facts import GpuDevice

log = logging.getLogger("supervisor.gpu")

VULKANINFO_TIMEOUT_S: Final = 15.0

_GPU_HEADER = re.compile(r"^\s*GPU(\d+):\s*$")
_KEY_VALUE = re.compile(r"^\s+(\w+)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class VulkanDevice:
    """One physical device as the Vulkan loader enumerates it."""

    index: int  # what GGML_VK_VISIBLE_DEVICES takes
    name: str
    uuid_key: str  # ``uuid_key`` of its deviceUUID; "" when vulkaninfo printed none
    device_type: str = ""  # PHYSICAL_DEVICE_TYPE_DISCRETE_GPU, …_CPU, …


def uuid_key(uuid: str) -> str:
    """A UUID reduced to 32 lowercase hex digits, so NVML's ``GPU-3d28c8d2-dcc3-…`` and
    Vulkan's ``3d28c8d2-dcc3-…`` compare equal; "" for anything that is not a UUID."""
    text = uuid.strip().lower().removeprefix("gpu-").replace("-", "")
    return text if re.fullmatch(r"[0-9a-f]{32}", text) else ""


def parse_vulkaninfo_summary(text: str) -> list[VulkanDevice]:
    """The devices of ``vulkaninfo --summary`` output, in its order (empty when it lists
    none). Lines outside the ``GPUn:`` blocks are ignored; the key/value lines of a block
    are indented under its header."""
    devices: list[VulkanDevice] = []
    current: int | None = None
    fields: dict[str, str] = {}

    def finish() -> None:
        if current is not None:
            devices.append(
                VulkanDevice(
                    index=current,
                    name=fields.get("deviceName", ""),
                    uuid_key=uuid_key(fields.get("deviceUUID", "")),
                    device_type=fields.get("deviceType", ""),
                )
            )

    for line in text.replace("\r", "").splitlines():
        header = _GPU_HEADER.match(line)
        if header is not None:
            finish()
            current, fields = int(header.group(1)), {}
            continue
        pair = _KEY_VALUE.match(line)
        if current is not None and pair is not None:
            fields.setdefault(pair.group(1), pair.group(2))
        elif current is not None and line.strip() and not line[0].isspace():
            finish()  # a new unindented section: the device list is over
            current, fields = None, {}
    finish()
    return devices


def vulkan_index_for(device: GpuDevice, order: Sequence[VulkanDevice]) -> int | None:
    """The Vulkan index of an NVML card, by UUID; None when no Vulkan device has it (no
    Vulkan driver for the card, or a vulkaninfo too old to print UUIDs). When one card is
    listed twice (two ICDs for it) the first is the one taken."""
    key = uuid_key(device.uuid)
    if not key:
        return None
    for vk in order:
        if vk.uuid_key == key:
            return vk.index
    return None


def read_vulkan_order(timeout_s: float = VULKANINFO_TIMEOUT_S) -> list[VulkanDevice] | None:
    """Run ``vulkaninfo --summary`` once; None when it is not installed, fails, hangs past
    ``timeout_s`` or lists no device (the caller then leaves GGML_VK_VISIBLE_DEVICES unset
    and says why)."""
    exe = shutil.which("vulkaninfo")
    if exe is None:
        log.info("vulkaninfo not found: the Vulkan device order is unknown")
        return None
    try:
        done = subprocess.run(
            [exe, "--summary"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("vulkaninfo --summary failed: %s", exc)
        return None
    # A loader with one broken ICD exits non-zero yet lists the working devices: trust the
    # listing, not the exit code.
    devices = parse_vulkaninfo_summary(done.stdout)
    if not devices:
        log.info("vulkaninfo --summary listed no device (exit code %d)", done.returncode)
        return None
    return devices
