"""The GPU memory governor: samples the GPUs, keeps the ledger, grants loads and evicts.

It is the one driver of the pure pieces (``ledger``, ``admission``, ``health``): a sampling
loop reads every device (NVML or simulated) from a worker thread; engine hosts ask before
they load (``LoadRequest``), and the governor answers one load at a time per device, after
telling idle hosts on that device to unload, least recently used first and only as much as
needed, and seeing the memory free in NVML (bounded: a host whose unload frees nothing in
time is recycled). A load's real size is measured around it (the host's own NVML
per-process figure where PIDs match, the device's used-memory change otherwise: loads on
one device never overlap, so the change is that load's). Every eviction and refusal is a
log line. Health (suspect devices, probes) lives in ``health_watch``.

It reaches slots only through ``GovernedSlot`` (the slot driver implements it), so this
package never imports the pool.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Final

import anyio
import anyio.abc
import anyio.to_thread

from protocol import ipc
from supervisor.gpu.admission import (
    DeviceRoom,
    ModelRoom,
    SlotRoom,
    gib,
    largest_admissible,
)
from supervisor.gpu.facts import GpuDevice, GpuReadError, GpuSourceWithXid, XidEvent
from supervisor.gpu.health import DeviceHealth
from supervisor.gpu.health_watch import HealthWatch
from supervisor.gpu.ledger import MemoryLedger, Reservation
from supervisor.gpu.loads import LoadBroker
from supervisor.gpu.meter import JobRecord, LoadMeter, measure
from supervisor.gpu.picture import MemoryPicture
from supervisor.gpu.slot_contract import GovernedSlot, GpuSettings

log = logging.getLogger("supervisor.gpu")

READ_TIMEOUT_S: Final = 10.0  # a read of every card; NVML normally answers in milliseconds


class GpuGovernor:
    def __init__(
        self,
        source: GpuSourceWithXid | None,
        devices: Sequence[GpuDevice],
        settings: GpuSettings,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self.settings = settings
        self.readings: dict[int, GpuDevice] = {d.index: d for d in devices}
        self.health: dict[int, DeviceHealth] = {d.index: DeviceHealth(d.index) for d in devices}
        self.ledger = MemoryLedger()
        self.evictions: Counter[int] = Counter()
        self.slots: dict[str, GovernedSlot] = {}
        self._on_change = on_change
        self.meter = LoadMeter()
        self.loads = LoadBroker(self)
        self._running: dict[str, str] = {}  # slot id -> job id, for the meter
        self._sampled = anyio.Event()
        self._read_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self.watch = HealthWatch(
            self.health,
            lambda: self.readings,
            self.slots.values,
            self.spawn,
            settings.probe_bytes,
            on_change,
        )

    # --- life ---------------------------------------------------------------------------------

    def register(self, slot: GovernedSlot) -> None:
        self.slots[slot.slot_id] = slot
        if slot.device_index is not None:
            self.ledger.attach(slot.slot_id, slot.device_index)

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while True:
                await self.sample()
                self._after_sample(time.monotonic())
                await anyio.sleep(self.settings.sample_interval_s)

    def spawn(self, fn: Callable[..., object], *args: object) -> None:
        assert self._tg is not None, "the governor is not serving"
        self._tg.start_soon(fn, *args)  # type: ignore[arg-type]

    async def sample(self) -> bool:
        """Read every device now, and the XID errors since the last read; False when the
        read failed (the last readings stay). NVML calls block, so a worker thread does them,
        one read at a time: a caller gets a read that started after it asked, and a driver
        that hangs ties up one thread, bounded by ``READ_TIMEOUT_S``, not the thread pool."""
        source = self.source
        if source is None:
            return False

        def read() -> tuple[list[GpuDevice], list[XidEvent]]:
            return source.read(), source.poll_xid_events()

        async with self._read_lock:
            devices: list[GpuDevice] | None = None
            with anyio.move_on_after(READ_TIMEOUT_S):
                try:
                    devices, xids = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
                except GpuReadError as exc:
                    log.warning("reading the GPUs failed: %s", exc)
                    return False
            if devices is None:
                log.warning(
                    "reading the GPUs took over %.0f s; keeping the last readings", READ_TIMEOUT_S
                )
                return False
            for event in xids:
                self.watch.xid(event.device_index, event.xid)
            self.readings = {d.index: d for d in devices}
            self._sampled.set()
            self._sampled = anyio.Event()
            return True

    async def next_sample(self) -> None:
        """Until the next reading of the GPUs is in (every ``sample_interval_s``)."""
        await self._sampled.wait()

    # --- what routing and the status surfaces read ------------------------------------------

    def picture(self, only: Collection[str] | None = None) -> MemoryPicture:
        """The picture admission reads; ``only``: a lane's slots (every GPU's room stays in
        it: the ledger is shared, so two lanes on one card never overcommit it)."""
        return MemoryPicture(
            governed=self.settings.governed,
            slots=tuple(self.slot_rooms(only)),
            devices=self.device_rooms(),
            peaks=self.ledger.peaks(),
            headroom_bytes=self.settings.headroom_bytes,
            max_warm_models=self.settings.max_warm_models,
        )

    def threshold_gb(self, configured_gb: float, only: Collection[str] | None = None) -> float:
        """``min(config, the largest job admissible right now)``; the config alone when
        nothing is governed (no GPU slot, or governance off)."""
        if not self.settings.governed:
            return configured_gb
        largest = largest_admissible(
            self.slot_rooms(only), self.device_rooms(), self.settings.headroom_bytes
        )
        if largest is None:
            return configured_gb
        return round(min(configured_gb, largest / 2**30), 2)

    def total_gb(self, only: Collection[str] | None = None) -> float:
        """Every card's memory, summed (protocol.md §9.6: ``vramTotalGb``); ``only``: the
        cards of those slots (a lane advertises its own devices)."""
        devices = (
            None
            if only is None
            else {s.device_index for s in self.slots.values() if s.slot_id in only}
        )
        return round(
            sum(d.total_bytes for i, d in self.readings.items() if devices is None or i in devices)
            / 2**30,
            2,
        )

    def advertised_gb(
        self, configured_threshold_gb: float, only: Collection[str] | None = None
    ) -> tuple[float, float]:
        """(``vramTotalGb``, ``vramThresholdGb``) for the next heartbeat, of every slot or
        of ``only`` (a lane's)."""
        return self.total_gb(only), self.threshold_gb(configured_threshold_gb, only)

    def takes_work(self, device: int | None) -> bool:
        return device is None or device not in self.health or self.health[device].takes_work

    def unexplained_bytes(self, slot: GovernedSlot) -> int | None:
        """The host's GPU memory beyond the models it reports loaded: what a leak grows.
        None where NVML cannot tell the host's own figure (containers)."""
        used = self.process_bytes(slot)
        if used is None:
            return None
        held = self.ledger.holdings(slot.slot_id)
        return max(0, used - (held.total_bytes if held is not None else 0))

    def process_bytes(self, slot: GovernedSlot) -> int | None:
        """The slot's host's GPU memory as NVML reports it, where PIDs match."""
        reading = self.readings.get(slot.device_index) if slot.device_index is not None else None
        if reading is None or reading.processes is None or slot.pid is None:
            return None
        return reading.processes.get(slot.pid, 0)

    def slot_rooms(self, only: Collection[str] | None = None) -> list[SlotRoom]:
        rooms = []
        for slot in self.slots.values():
            if only is not None and slot.slot_id not in only:
                continue
            held = self.ledger.holdings(slot.slot_id)
            models = tuple(
                ModelRoom(m.load_key, m.size_bytes, m.last_used)
                for m in (held.models.values() if held else ())
            )
            rooms.append(
                SlotRoom(
                    slot.slot_id,
                    slot.engine,
                    slot.device_index,
                    slot.is_free and self.takes_work(slot.device_index),
                    slot.is_idle,
                    models,
                )
            )
        return rooms

    def device_rooms(self, *, except_job: str | None = None) -> dict[int, DeviceRoom]:
        """Each card's free memory for admission: NVML's last reading, but never more than
        the ledger leaves (a model reported loaded a moment ago may not be in the reading
        yet), less what admitted jobs (other than ``except_job``) have reserved."""
        rooms = {}
        for index, reading in self.readings.items():
            reserved = self.ledger.reserved_on(index)
            own = self.ledger.reservation(except_job) if except_job else None
            if own is not None and own.device == index:
                reserved -= own.need_bytes
            held = sum(h.total_bytes for h in self.ledger.on_device(index))
            free = min(reading.free_bytes, reading.total_bytes - held)
            # Not clamped: an overcommitted card must read as such, or two admissions in a
            # row could both plan to unload the same idle model.
            rooms[index] = DeviceRoom(
                index, reading.total_bytes, free - reserved, self.takes_work(index)
            )
        return rooms

    # --- reservations (routing) -----------------------------------------------------------------

    def reserve(self, job_id: str, slot_id: str, load_key: str, need: int) -> None:
        slot = self.slots.get(slot_id)
        if slot is None or slot.device_index is None or need <= 0:
            return
        self.ledger.reserve(job_id, Reservation(slot.device_index, slot_id, load_key, need))

    def release(self, job_id: str) -> None:
        self.ledger.release(job_id)

    # --- from the slots ---------------------------------------------------------------------------

    def load_requested(self, slot: GovernedSlot, msg: ipc.LoadRequest) -> None:
        self.spawn(self.loads.serve, slot, msg, slot.generation)

    def resident_reported(self, slot: GovernedSlot, models: Sequence[ipc.ResidentModel]) -> None:
        left = self.ledger.update_resident(
            slot.slot_id, [(m.load_key, m.size_bytes) for m in models], time.monotonic()
        )
        self.loads.resident_reported(slot, [m.load_key for m in models])
        if left and slot.device_index is not None:
            # Dropped by the host itself (it keeps max_warm_models, least recent out):
            # what the supervisor orders unloaded left the ledger when it ordered it.
            for key in left:
                self.evictions[slot.device_index] += 1
                log.info(
                    "slot %s unloaded %s to stay within max_warm_models on gpu %d",
                    slot.slot_id,
                    key,
                    slot.device_index,
                )
        self._on_change()

    def progress_reported(self, slot: GovernedSlot, msg: ipc.Progress) -> None:
        if msg.phase == "loading" and msg.step >= msg.total > 0:
            self.loads.loaded(slot)

    def job_started(self, slot: GovernedSlot, job_id: str, load_key: str) -> None:
        if slot.device_index is None:
            return
        self.ledger.touch(slot.slot_id, load_key, time.monotonic())
        self.meter.job_started(slot.slot_id, slot.device_index, load_key)
        self._running[slot.slot_id] = job_id

    def job_ended(self, slot: GovernedSlot, job_id: str) -> None:
        self.ledger.release(job_id)
        self.loads.job_ended(slot, job_id)
        if self._running.pop(slot.slot_id, None) is not None:
            record = self.meter.finish(slot.slot_id)  # now: the next job may start at once
            if record is not None:
                self.spawn(self._measure_job, slot, record)

    async def _measure_job(self, slot: GovernedSlot, record: JobRecord) -> None:
        """Read the card right after the job, and keep what it took."""
        if not await self.sample():
            return
        reading = self.readings.get(record.device)
        if reading is None:
            return
        measured = measure(record, self.meter, reading.used_bytes, self.process_bytes(slot))
        key = measured.load_key
        if measured.size_bytes is not None:
            self.ledger.record_size(slot.slot_id, key, measured.size_bytes)
            log.info(
                "loaded %s on gpu %s (slot %s): %s measured",
                key,
                record.device,
                slot.slot_id,
                gib(measured.size_bytes),
            )
        self.ledger.touch(slot.slot_id, key, time.monotonic())
        if measured.transient_bytes is not None:
            size = self.ledger.size_of(key, 0)
            if size:
                self.ledger.record_peak(key, size + measured.transient_bytes)

    async def relieve(self, slot: GovernedSlot) -> None:
        """Free the slot's GPU for the one local retry of an out-of-memory job."""
        await self.loads.relieve(slot)

    def host_gone(self, slot: GovernedSlot) -> None:
        """The slot's host is gone: so is everything it held."""
        self.ledger.clear(slot.slot_id)
        self._running.pop(slot.slot_id, None)
        self.meter.forget(slot.slot_id)
        self.loads.host_gone(slot)
        self._on_change()

    # --- every sample -----------------------------------------------------------------------------

    def _after_sample(self, now: float) -> None:
        for slot_id in self._running:
            slot = self.slots.get(slot_id)
            reading = (
                self.readings.get(slot.device_index)
                if slot and slot.device_index is not None
                else None
            )
            if slot is not None and reading is not None:
                self.meter.sampled(slot_id, reading.used_bytes, self.process_bytes(slot))
        keep_alive = self.settings.keep_alive_s
        if keep_alive > 0:
            self._unload_idle_models(now, keep_alive)

    def _unload_idle_models(self, now: float, keep_alive_s: float) -> None:
        for slot in self.slots.values():
            held = self.ledger.holdings(slot.slot_id)
            if held is None or not slot.is_idle:
                continue
            stale = [m.load_key for m in held.models.values() if now - m.last_used > keep_alive_s]
            if stale:
                log.info(
                    "unloading %s from slot %s: unused for %.0f s (model_keep_alive_s)",
                    ", ".join(stale),
                    slot.slot_id,
                    keep_alive_s,
                )
                self.ledger.forget(slot.slot_id, stale)
                if slot.device_index is not None:
                    self.meter.disturb(slot.device_index)
                self.spawn(slot.send, ipc.Unload(stale))
