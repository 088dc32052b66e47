"""The per-GPU memory ledger: what every slot keeps loaded, and what each load key costs.

Keyed by what hosts actually keep (``engines.load_keys``): a host reports its resident
models with ``Resident`` and the ledger mirrors it, most recently used last. Sizes are the
measured ones where the governor could measure them (NVML around the load), else the
host's own figure, else the job's estimate. Per load key the ledger also remembers the
largest size and transient peak ever measured, so a model seen once is admitted by what it
really took. Admitted jobs hold a reservation on their device until their load is measured
or the job ends, so two admissions in a row never count the same free memory twice.

Pure: no clock (times are arguments), no I/O, no NVML.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class Loaded:
    load_key: str
    size_bytes: int
    last_used: float


@dataclass
class Holdings:
    """One slot's host on one device: its models, least recently used first."""

    slot_id: str
    device: int
    models: dict[str, Loaded] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(m.size_bytes for m in self.models.values())


@dataclass(frozen=True)
class KnownCost:
    """What one load key took when it was measured: resident size and peak while working."""

    size_bytes: int
    peak_bytes: int


@dataclass(frozen=True)
class Reservation:
    device: int
    slot_id: str
    load_key: str
    need_bytes: int


class MemoryLedger:
    def __init__(self) -> None:
        self._slots: dict[str, Holdings] = {}
        self._costs: dict[str, KnownCost] = {}
        self._reserved: dict[str, Reservation] = {}  # by job id

    # --- slots ------------------------------------------------------------------------------

    def attach(self, slot_id: str, device: int) -> None:
        self._slots.setdefault(slot_id, Holdings(slot_id, device))

    def holdings(self, slot_id: str) -> Holdings | None:
        return self._slots.get(slot_id)

    def on_device(self, device: int) -> list[Holdings]:
        return [h for h in self._slots.values() if h.device == device]

    def update_resident(
        self, slot_id: str, reported: Sequence[tuple[str, int]], now: float
    ) -> list[str]:
        """Mirror a host's ``Resident`` report; returns the keys that left. A size the
        ledger measured is kept over the host's own figure; a new model starts at the best
        size known for its key."""
        held = self._slots.get(slot_id)
        if held is None:
            return []
        before = held.models
        after: dict[str, Loaded] = {}
        for key, host_bytes in reported:
            old = before.get(key)
            if old is not None:
                after[key] = old
            else:
                after[key] = Loaded(key, self.size_of(key, host_bytes), now)
        held.models = after
        return [key for key in before if key not in after]

    def touch(self, slot_id: str, load_key: str, now: float) -> None:
        """A job used ``load_key`` on this slot: most recently used now."""
        held = self._slots.get(slot_id)
        if held is None or load_key not in held.models:
            return
        entry = held.models.pop(load_key)
        entry.last_used = now
        held.models[load_key] = entry

    def forget(self, slot_id: str, keys: Iterable[str]) -> None:
        """The models are on their way out (an unload was ordered): no longer count them
        as resident for routing, even before the host confirms."""
        held = self._slots.get(slot_id)
        if held is not None:
            for key in keys:
                held.models.pop(key, None)

    def clear(self, slot_id: str) -> None:
        """The slot's host is gone, and its memory with it."""
        held = self._slots.get(slot_id)
        if held is not None:
            held.models = {}
        for job_id in [j for j, r in self._reserved.items() if r.slot_id == slot_id]:
            del self._reserved[job_id]

    # --- costs ------------------------------------------------------------------------------

    def record_size(self, slot_id: str, load_key: str, size_bytes: int) -> None:
        """The measured resident size of ``load_key`` (NVML around its load)."""
        known = self._costs.get(load_key)
        if known is not None:
            # One load key loads the same weights: keep the largest reading, so a reading
            # taken a moment early never shrinks what the model is known to take.
            size_bytes = max(size_bytes, known.size_bytes)
        peak = max(size_bytes, known.peak_bytes if known else 0)
        self._costs[load_key] = KnownCost(size_bytes, peak)
        held = self._slots.get(slot_id)
        if held is not None and load_key in held.models:
            held.models[load_key].size_bytes = size_bytes

    def record_peak(self, load_key: str, peak_bytes: int) -> None:
        """The most a job of ``load_key`` held while it ran (model plus working buffers)."""
        known = self._costs.get(load_key)
        if known is None:
            self._costs[load_key] = KnownCost(0, peak_bytes)
        elif peak_bytes > known.peak_bytes:
            self._costs[load_key] = KnownCost(known.size_bytes, peak_bytes)

    def cost(self, load_key: str) -> KnownCost | None:
        return self._costs.get(load_key)

    def size_of(self, load_key: str, fallback_bytes: int) -> int:
        known = self._costs.get(load_key)
        if known is not None and known.size_bytes > 0:
            return known.size_bytes
        return fallback_bytes

    def peaks(self) -> dict[str, int]:
        """Load key -> the most it was measured to take (for ``admission.need_bytes``)."""
        return {key: cost.peak_bytes for key, cost in self._costs.items() if cost.peak_bytes}

    # --- reservations -------------------------------------------------------------------------

    def reserve(self, job_id: str, reservation: Reservation) -> None:
        self._reserved[job_id] = reservation

    def release(self, job_id: str) -> Reservation | None:
        return self._reserved.pop(job_id, None)

    def reservation(self, job_id: str) -> Reservation | None:
        return self._reserved.get(job_id)

    def reserved_on(self, device: int) -> int:
        return sum(r.need_bytes for r in self._reserved.values() if r.device == device)
