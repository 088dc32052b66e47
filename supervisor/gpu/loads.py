"""Loads onto a GPU, one at a time per card: plan, evict, wait for the memory, grant.

An engine host asks before it loads (``LoadRequest``); ``LoadBroker.serve`` answers under
the card's lock, with fresh readings: ``admission.plan_unloads`` names what idle hosts on the
card must unload (least recently used first, only as much as needed), the broker tells them
(``Unload``), waits until NVML shows the memory free (bounded by ``vram_unload_timeout_s``;
a host whose unload freed nothing in time is recycled), then grants (``LoadGrant``, naming
what the requester must unload of its own first). The lock is held until the host says the
model is in, so loads on one card never overlap and a card's used-memory change belongs to
one load. ``relieve`` frees a card for the one local retry of an out-of-memory job.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from protocol import ipc
from supervisor.gpu.admission import DeviceRoom, SlotRoom, Unload, gib, need_bytes, plan_unloads
from supervisor.gpu.facts import GpuDevice
from supervisor.gpu.ledger import MemoryLedger
from supervisor.gpu.meter import LoadMeter
from supervisor.gpu.slot_contract import GovernedSlot, GpuSettings, RecycleCause

log = logging.getLogger("supervisor.gpu")


@dataclass
class _Pending:
    """A granted load, until the host says the model is in, the job ends or the host goes."""

    job_id: str
    load_key: str
    loaded: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)


class BrokerHost(Protocol):
    """What the broker reads and drives of the governor that owns it."""

    settings: GpuSettings
    ledger: MemoryLedger
    meter: LoadMeter
    evictions: Counter[int]

    @property
    def readings(self) -> Mapping[int, GpuDevice]: ...
    @property
    def slots(self) -> Mapping[str, GovernedSlot]: ...
    async def sample(self) -> bool: ...
    def slot_rooms(self) -> list[SlotRoom]: ...
    def device_rooms(self, *, except_job: str | None = None) -> dict[int, DeviceRoom]: ...
    def process_bytes(self, slot: GovernedSlot) -> int | None: ...


class LoadBroker:
    def __init__(self, governor: BrokerHost) -> None:
        self._gov = governor
        self._locks: dict[int, anyio.Lock] = {}
        self._pending: dict[str, _Pending] = {}  # by slot id
        self._unload_first: dict[str, list[str]] = {}  # by job id, between plan and grant

    def _lock(self, device: int) -> anyio.Lock:
        return self._locks.setdefault(device, anyio.Lock())

    # --- what the host says -------------------------------------------------------------------

    def loaded(self, slot: GovernedSlot) -> None:
        pending = self._pending.get(slot.slot_id)
        if pending is not None:
            pending.loaded = True
            pending.done.set()

    def resident_reported(self, slot: GovernedSlot, keys: Sequence[str]) -> None:
        pending = self._pending.get(slot.slot_id)
        if pending is not None and pending.load_key in keys:
            pending.loaded = True
            pending.done.set()

    def job_ended(self, slot: GovernedSlot, job_id: str) -> None:
        """The job is over, loaded or not (a failed load, a cancel while waiting)."""
        pending = self._pending.get(slot.slot_id)
        if pending is not None and pending.job_id == job_id:
            pending.done.set()

    def host_gone(self, slot: GovernedSlot) -> None:
        pending = self._pending.get(slot.slot_id)
        if pending is not None:
            pending.done.set()

    # --- loads ------------------------------------------------------------------------------------

    async def serve(self, slot: GovernedSlot, msg: ipc.LoadRequest, generation: int) -> None:
        """Answer one ``LoadRequest`` of the host ``generation`` of ``slot``."""
        gov = self._gov
        device = slot.device_index
        if not gov.settings.governed or device is None:
            await slot.send(ipc.LoadGrant(msg.job_id, True))
            return
        async with self._lock(device):
            if slot.generation != generation:
                return  # that host is gone; its job was failed with it
            reason = await self._make_room(slot, msg, device, generation)
            if reason is not None:
                log.warning("refusing load of %s for job %s: %s", msg.load_key, msg.job_id, reason)
                await slot.send(ipc.LoadGrant(msg.job_id, False, reason))
                return
            await self._grant(slot, msg, device)

    async def _make_room(
        self, slot: GovernedSlot, msg: ipc.LoadRequest, device: int, generation: int
    ) -> str | None:
        """Unload what must go for this load; None when it may go ahead, else why not."""
        gov = self._gov
        if not await gov.sample() or device not in gov.readings:
            return f"GPU {device} could not be read"
        reservation = gov.ledger.reservation(msg.job_id)
        need = (
            reservation.need_bytes
            if reservation is not None
            else need_bytes(
                msg.estimate_bytes,
                gov.ledger.peaks().get(msg.load_key, 0),
                gov.settings.headroom_bytes,
            )
        )
        rooms = gov.slot_rooms()
        target = next(r for r in rooms if r.slot_id == slot.slot_id)
        free = gov.device_rooms(except_job=msg.job_id)[device].free_bytes
        plan = plan_unloads(target, need, free, rooms, gov.settings.max_warm_models)
        if plan is None:
            return (
                f"{gib(need)} of GPU memory do not fit on GPU {device} now "
                f"({gib(max(0, free))} free, the rest held by busy slots or other processes)"
            )
        own = [u for u in plan if u.slot_id == slot.slot_id]
        others = [u for u in plan if u.slot_id != slot.slot_id]
        self._count(device, plan, f"job {msg.job_id} on slot {slot.slot_id}")
        gov.ledger.forget(slot.slot_id, [u.load_key for u in own])
        own_bytes = sum(u.size_bytes for u in own)
        if others:
            freed = await self._unload_and_wait(device, others, need - own_bytes, msg.job_id)
            if not freed:
                return f"the memory unloaded on GPU {device} did not come free in time"
        if slot.generation != generation or device not in gov.readings:
            return "the host went away while memory was made free"
        gov.meter.load_granted(
            slot.slot_id, gov.readings[device].used_bytes, gov.process_bytes(slot), own_bytes
        )
        self._unload_first[msg.job_id] = [u.load_key for u in own]
        return None

    async def _grant(self, slot: GovernedSlot, msg: ipc.LoadRequest, device: int) -> None:
        """Let the load go, and hold the card's lock until the model is in (loads on one
        card never overlap) or the job or host is over, bounded by ``load_timeout_s``."""
        gov = self._gov
        pending = self._pending[slot.slot_id] = _Pending(msg.job_id, msg.load_key)
        try:
            unload_first = self._unload_first.pop(msg.job_id, [])
            if not await slot.send(ipc.LoadGrant(msg.job_id, True, unload_first=unload_first)):
                return
            with anyio.move_on_after(gov.settings.load_timeout_s):
                await pending.done.wait()
            if pending.loaded and await gov.sample():
                # The model is in NVML's reading now: its reservation would count it twice.
                gov.ledger.release(msg.job_id)
        finally:
            if self._pending.get(slot.slot_id) is pending:
                del self._pending[slot.slot_id]

    def _count(self, device: int, plan: Iterable[Unload], why: str) -> None:
        for unload in plan:
            self._gov.evictions[device] += 1
            log.info(
                "evicting %s (%s) from slot %s on gpu %d for %s",
                unload.load_key,
                gib(unload.size_bytes),
                unload.slot_id,
                device,
                why,
            )

    async def _unload_and_wait(
        self,
        device: int,
        plan: Sequence[Unload],
        need: int,
        job_id: str | None = None,
        *,
        raw: bool = False,
    ) -> bool:
        """Tell idle hosts to unload, and wait until NVML shows ``need`` free on ``device``
        (``raw``: NVML's free alone; else less other jobs' reservations), bounded; hosts
        whose unload freed nothing in time are recycled, and waited for once more. True
        when the memory came free."""
        gov = self._gov
        by_slot: dict[str, list[str]] = {}
        for unload in plan:
            by_slot.setdefault(unload.slot_id, []).append(unload.load_key)
        before = {sid: gov.process_bytes(gov.slots[sid]) for sid in by_slot}
        generations = {sid: gov.slots[sid].generation for sid in by_slot}
        gov.meter.disturb(device)
        for slot_id, keys in by_slot.items():
            gov.ledger.forget(slot_id, keys)
            await gov.slots[slot_id].send(ipc.Unload(keys))
        if await self._wait_free(device, need, job_id, raw=raw):
            return True
        timeout_s = gov.settings.unload_timeout_s
        for slot_id, keys in by_slot.items():
            slot = gov.slots[slot_id]
            now, then = gov.process_bytes(slot), before[slot_id]
            if now is not None and then is not None and now < then:
                continue  # this one did free memory; someone else holds the rest
            log.warning(
                "slot %s was told to unload %s and freed nothing within %.0f s; recycling it",
                slot_id,
                ", ".join(keys),
                timeout_s,
            )
            slot.recycle(
                RecycleCause.UNLOAD_STUCK,
                f"freed no GPU memory within {timeout_s:.0f} s of an unload",
                generations[slot_id],
            )
        return await self._wait_free(device, need, job_id, raw=raw)

    async def _wait_free(self, device: int, need: int, job_id: str | None, *, raw: bool) -> bool:
        """Until ``need`` is free on ``device`` (``raw``: as NVML reads it; else less what
        other admitted jobs reserved), or the unload timeout."""
        gov = self._gov
        with anyio.move_on_after(gov.settings.unload_timeout_s):
            while True:
                if await gov.sample():
                    reading = gov.readings.get(device)
                    if reading is None:
                        return False
                    free = (
                        reading.free_bytes
                        if raw
                        else gov.device_rooms(except_job=job_id)[device].free_bytes
                    )
                    if free >= need:
                        return True
                await anyio.sleep(gov.settings.sample_interval_s)
        return False

    async def relieve(self, slot: GovernedSlot) -> None:
        """Before the one local retry of an out-of-memory job: unload what idle slots on
        the slot's GPU keep loaded (not the slot's own: its retry needs it)."""
        gov = self._gov
        device = slot.device_index
        if device is None or not gov.settings.governed:
            return
        async with self._lock(device):
            plan = [
                Unload(room.slot_id, m.load_key, m.size_bytes)
                for room in gov.slot_rooms()
                if room.device == device and room.idle and room.slot_id != slot.slot_id
                for m in room.models
            ]
            if not plan:
                return
            self._count(device, plan, f"the retry of an out-of-memory job on {slot.slot_id}")
            reading = gov.readings.get(device)
            if reading is None:
                return
            # A gain on what NVML reads now: new admissions meanwhile do not move it.
            target = reading.free_bytes + sum(u.size_bytes for u in plan)
            await self._unload_and_wait(device, plan, target, raw=True)
