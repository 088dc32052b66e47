"""Which card each ``engine@N`` slot runs on, and the environment that pins its host there:
one GPU, one name. ``engine@N`` is the N-th card this supervisor may use (``visible_devices``:
NVML's device N, or the N-th entry of an inherited ``CUDA_VISIBLE_DEVICES``); its host gets
the card's UUID, so whatever order its libraries count in it sees exactly that card, plus
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for anything that still counts indices, and Vulkan's own
index for the card where the Vulkan order is known. Without NVML (no device list: AMD, no
NVIDIA driver) a slot gets its number for every backend, as before NVML was read. Pure: the
devices, the slots, the inherited value and the Vulkan order come in as arguments; it never
reads the environment, runs a tool or logs (the caller logs the notes it returns).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from supervisor.gpu.facts import DeviceIndexError, GpuDevice
from supervisor.gpu.vulkan_order import VulkanDevice, vulkan_index_for

CUDA_VISIBLE_DEVICES: Final = "CUDA_VISIBLE_DEVICES"
CUDA_DEVICE_ORDER: Final = "CUDA_DEVICE_ORDER"
PCI_BUS_ID: Final = "PCI_BUS_ID"
GGML_VK_VISIBLE_DEVICES: Final = "GGML_VK_VISIBLE_DEVICES"
HIP_VISIBLE_DEVICES: Final = "HIP_VISIBLE_DEVICES"
ROCR_VISIBLE_DEVICES: Final = "ROCR_VISIBLE_DEVICES"

_UUID_PREFIXES: Final = ("GPU-", "MIG-")


@dataclass(frozen=True)
class HostPin:
    """Where one ``engine@N`` slot runs, and how its host is told."""

    gpu: int  # N of engine@N
    device: GpuDevice  # the card read at start; ``device.index`` is NVML's index
    vulkan_index: int | None  # None: the Vulkan order is unknown or lacks this card
    vulkan_note: str = ""  # why ``vulkan_index`` is None, for the caller's log line

    @property
    def env(self) -> dict[str, str]:
        return pinned_env(self.device, self.vulkan_index)


def describe_devices(devices: Sequence[GpuDevice]) -> str:
    """``2 GPU(s): 0 NVIDIA H200 GPU-…, 1 …`` for error messages."""
    if not devices:
        return "no GPU"
    listed = ", ".join(f"{d.index} {d.name} {d.uuid}" for d in devices)
    return f"{len(devices)} GPU(s): {listed}"


def visible_entries(value: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value that CUDA honours: comma-separated,
    blanks stripped, up to (not including) the first that is not an index or a UUID."""
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        is_index = entry.isascii() and entry.isdigit()
        if not (is_index or entry.upper().startswith(_UUID_PREFIXES)):
            break
        entries.append(entry)
    return entries


def _match_entry(entry: str, devices: Sequence[GpuDevice], inherited: str) -> GpuDevice:
    """The card an inherited entry names; ``DeviceIndexError`` when it names none, more than
    one (an ambiguous UUID prefix) or a MIG instance."""
    where = f"inherited {CUDA_VISIBLE_DEVICES}={inherited!r}"
    if entry.isdigit():
        for device in devices:
            if device.index == int(entry):
                return device
        raise DeviceIndexError(
            f"{where} names GPU {entry}, but NVML sees {describe_devices(devices)}"
        )
    wanted = entry.upper()
    exact = [d for d in devices if d.uuid.upper() == wanted]
    found = exact or [d for d in devices if d.uuid.upper().startswith(wanted)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DeviceIndexError(f"{where}: {entry} is the start of more than one GPU's UUID")
    if wanted.startswith("MIG-"):
        raise DeviceIndexError(
            f"{where} names the MIG instance {entry}; the supervisor governs whole GPUs "
            f"(NVML sees {describe_devices(devices)}): give it whole GPUs, by index or GPU-UUID"
        )
    raise DeviceIndexError(
        f"{where}: {entry} matches no GPU; NVML sees {describe_devices(devices)}"
    )


def visible_devices(devices: Sequence[GpuDevice], inherited: str | None) -> list[GpuDevice]:
    """The cards ``engine@N`` counts, in order: every device by NVML index when ``inherited``
    (the supervisor's own ``CUDA_VISIBLE_DEVICES``; container runtimes and batch schedulers
    set it) is None, else its entries' cards (an empty value: none).

    Entries are NVML indices (PCI bus order: CUDA's too under ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
    the only order stable across processes) or UUIDs (``GPU-…``; a unique prefix is enough,
    as in CUDA). As in CUDA the list ends at the first entry that is neither, so ``-1`` hides
    every card. A ``MIG-…`` entry matches only a device read with that UUID: NVML's device
    list holds whole cards, so a MIG instance is an error that says so, not a guess at its
    parent. Raises ``DeviceIndexError`` for an entry that matches no card and for a card
    named twice (two slots would then share one card under two numbers)."""
    if inherited is None:
        return sorted(devices, key=lambda d: d.index)
    visible: list[GpuDevice] = []
    for entry in visible_entries(inherited):
        device = _match_entry(entry, devices, inherited)
        if device in visible:
            raise DeviceIndexError(
                f"inherited {CUDA_VISIBLE_DEVICES}={inherited!r} names GPU {device.index} "
                f"({device.uuid}) twice"
            )
        visible.append(device)
    return visible


def device_for_slot(
    visible: Sequence[GpuDevice], engine: str, gpu: int, *, inherited: str | None = None
) -> GpuDevice:
    """The card of ``engine@gpu`` among the ``visible`` ones (``inherited`` only words the
    error); ``DeviceIndexError`` naming the slot and the cards present when there is none."""
    if 0 <= gpu < len(visible):
        return visible[gpu]
    present = describe_devices(visible)
    if inherited is not None:
        present += f" (the inherited {CUDA_VISIBLE_DEVICES}={inherited!r} is counted from 0)"
    else:
        present += " (counted from 0 in PCI bus order)"
    raise DeviceIndexError(
        f"`{engine}@{gpu}` names GPU {gpu}, but this machine has {present}; fix --engines or "
        "the config's `engines`"
    )


def pin_slots(
    devices: Sequence[GpuDevice],
    slots: Iterable[tuple[str, int]],
    *,
    inherited: str | None,
    vulkan_order: Sequence[VulkanDevice] | None,
) -> dict[int, HostPin]:
    """One ``HostPin`` per distinct N among the ``(engine, N)`` slots (``engine@N``; slots on
    the default device are not passed). ``inherited`` is the supervisor's own
    ``CUDA_VISIBLE_DEVICES`` (None: unset); ``vulkan_order`` None means the Vulkan order
    could not be read. Raises ``DeviceIndexError`` for an N beyond the cards and for an
    inherited entry that matches no card."""
    visible = visible_devices(devices, inherited)
    pins: dict[int, HostPin] = {}
    for engine, gpu in slots:
        if gpu in pins:
            continue
        device = device_for_slot(visible, engine, gpu, inherited=inherited)
        if vulkan_order is None:
            vk, note = None, "the Vulkan device order is unknown (vulkaninfo missing or failed)"
        else:
            vk = vulkan_index_for(device, vulkan_order)
            note = "" if vk is not None else f"no Vulkan device has the UUID {device.uuid}"
        pins[gpu] = HostPin(gpu, device, vk, note)
    return pins


def pinned_env(device: GpuDevice, vulkan_index: int | None) -> dict[str, str]:
    """The environment of a host on ``device``: its UUID for CUDA, PCI bus order for
    anything that counts, its Vulkan index where known (else nothing: the caller logs it)."""
    env = {CUDA_VISIBLE_DEVICES: device.uuid, CUDA_DEVICE_ORDER: PCI_BUS_ID}
    if vulkan_index is not None:
        env[GGML_VK_VISIBLE_DEVICES] = str(vulkan_index)
    return env


def index_env(gpu: int | None) -> dict[str, str]:
    """Without a device list (no NVML): the slot's number for every backend, CUDA, ROCm/HIP
    and Vulkan alike; nothing for a slot on the default device. As ``gpu_env`` did."""
    if gpu is None:
        return {}
    index = str(gpu)
    return {
        CUDA_VISIBLE_DEVICES: index,
        HIP_VISIBLE_DEVICES: index,
        ROCR_VISIBLE_DEVICES: index,
        GGML_VK_VISIBLE_DEVICES: index,
    }


def host_gpu_env(gpu: int | None, pin: HostPin | None) -> dict[str, str]:
    """The pinning environment of one slot's host: the pin's when the slot has one (a card
    read from NVML), else ``index_env`` (default device, or no NVML)."""
    return pin.env if pin is not None else index_env(gpu)
