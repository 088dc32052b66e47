"""GPU health, driven: faults make a device suspect, a fresh host's probe clears it.

A fault is a host on the device dying by a native fault other than out-of-memory, a job
failing with a device error, or an NVML XID error. While a device is suspect its slots take
no offers (``GpuGovernor.takes_work``). The probe: NVML still answers for the device, and
the first host that comes up fresh on it initialises its GPU backend and allocates and
frees a small buffer (``ipc.Probe``). A fault asks every slot on the card to replace its
host once it is between jobs, so a fresh one comes up to probe; a failed probe recycles that
host, so the next fresh one probes again (the slot's backoff paces it). Every health change
is a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from protocol import ipc
from supervisor.gpu.facts import GpuDevice
from supervisor.gpu.health import DeviceHealth, GpuHealth
from supervisor.gpu.slot_contract import GovernedSlot, RecycleCause

log = logging.getLogger("supervisor.gpu")


class HealthWatch:
    def __init__(
        self,
        health: Mapping[int, DeviceHealth],
        readings: Callable[[], Mapping[int, GpuDevice]],
        slots: Callable[[], Iterable[GovernedSlot]],
        spawn: Callable[..., None],
        probe_bytes: int,
        on_change: Callable[[], None],
    ) -> None:
        self._health = health
        self._slots = slots
        self._readings = readings
        self._spawn = spawn
        self._probe_bytes = probe_bytes
        self._on_change = on_change

    def fault(self, device: int | None, reason: str) -> None:
        health = self._health.get(device) if device is not None else None
        if health is None:
            return
        if health.fault(reason):
            log.warning(
                "gpu %d: suspect (%s); its slots take no offers until a probe passes",
                device,
                reason,
            )
            # Fresh hosts probe: replace the live ones on the card (each once it is between
            # jobs), or a card whose hosts all stay up would never be probed.
            for slot in self._slots():
                if slot.device_index == device:
                    slot.recycle(RecycleCause.GPU_SUSPECT, reason, slot.generation)
        self._on_change()

    def host_ready(self, slot: GovernedSlot) -> None:
        """A fresh host came up: if its device is suspect and nobody probes it, probe."""
        device = slot.device_index
        health = self._health.get(device) if device is not None else None
        if health is None or health.state is not GpuHealth.SUSPECT:
            return
        health.probe_sent(slot.slot_id)
        log.info("gpu %d: probing with a fresh host on slot %s", device, slot.slot_id)
        self._spawn(self._send_probe, slot)

    async def _send_probe(self, slot: GovernedSlot) -> None:
        if not await slot.send(ipc.Probe(self._probe_bytes)):
            self.probe_reported(slot, ipc.ProbeResult(False, "the host went away"))

    def probe_reported(self, slot: GovernedSlot, result: ipc.ProbeResult) -> None:
        device = slot.device_index
        health = self._health.get(device) if device is not None else None
        if health is None or health.probing_slot != slot.slot_id:
            return
        ok, detail = result.ok, result.detail
        if ok and device not in self._readings():
            ok, detail = False, "NVML does not report the device"
        health.probe_result(ok, detail)
        if ok:
            log.info(
                "gpu %d: healthy again (probe passed on slot %s: %s)", device, slot.slot_id, detail
            )
        else:
            log.warning(
                "gpu %d: still suspect (probe on slot %s failed: %s); recycling that host",
                device,
                slot.slot_id,
                detail,
            )
            slot.recycle(
                RecycleCause.PROBE_FAILED, f"its GPU probe failed ({detail})", slot.generation
            )
        self._on_change()

    def host_lost(self, slot: GovernedSlot) -> None:
        """A probing host that dies leaves the device suspect; the next fresh host probes."""
        device = slot.device_index
        health = self._health.get(device) if device is not None else None
        if health is not None and health.probing_slot == slot.slot_id:
            health.probe_result(False, "the probing host died")
            self._on_change()

    def xid(self, device: int, xid: int) -> None:
        self.fault(device, f"NVML reported XID {xid}")
