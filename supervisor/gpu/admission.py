"""Does a job fit, on which slot, and what must be unloaded for it: pure decisions.

``admit`` is asked before an offer is accepted. Among the free slots of the routed engine
it prefers the slot where the model is already loaded (it needs nothing), then one where it
fits without unloading anything, then the one needing the least unloading (on a tie, a slot
that holds nothing). Memory that can be freed is what idle slots on the same GPU keep loaded (a busy
slot's model is in use), plus what the chosen slot itself drops to stay within
``max_warm_models``. When nothing fits because slots on the GPU are busy (or memory is held
by others), the answer is transient (``busy``); when the job needs more than any usable GPU
here has at all, it is not (the studio should offer it elsewhere).

``plan_unloads`` is asked again when the host is about to load (after any download), with
fresh readings: which models of which idle slots to unload, least recently used first, and
only as many as needed. ``largest_admissible`` is what the worker can take right now, for
the ``vramThresholdGb`` it advertises. A slot with no GPU (the default device on a machine
without one) has no memory to govern: it is admitted as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class DeviceRoom:
    index: int
    total_bytes: int
    free_bytes: int  # NVML's free, less what admitted-but-not-loaded jobs have reserved
    healthy: bool


@dataclass(frozen=True)
class ModelRoom:
    load_key: str
    size_bytes: int
    last_used: float


@dataclass(frozen=True)
class SlotRoom:
    slot_id: str
    engine: str
    device: int | None
    free: bool  # may be reserved for a new job now
    idle: bool  # between jobs: what it keeps loaded may be unloaded
    models: tuple[ModelRoom, ...] = ()  # least recently used first

    def holds(self, load_key: str) -> bool:
        return any(m.load_key == load_key for m in self.models)


@dataclass(frozen=True)
class Admitted:
    slot_id: str
    need_bytes: int  # 0 when the model is already loaded there
    unload_bytes: int  # how much must be unloaded (the slot's own included) to fit


@dataclass(frozen=True)
class Unfit:
    transient: bool  # True: busy now (reject ``busy``); False: no GPU here is big enough
    reason: str


Admission = Admitted | Unfit


@dataclass(frozen=True)
class Unload:
    slot_id: str
    load_key: str
    size_bytes: int


def gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def need_bytes(estimate_bytes: int, measured_peak_bytes: int, headroom_bytes: int) -> int:
    """What a load asks of a GPU: ``max(estimate, measured peak if known) + headroom``."""
    return max(estimate_bytes, measured_peak_bytes) + headroom_bytes


def own_overflow(slot: SlotRoom, max_warm_models: int) -> tuple[ModelRoom, ...]:
    """The models ``slot`` drops by itself before loading one more (least recently used)."""
    excess = len(slot.models) + 1 - max(1, max_warm_models)
    return slot.models[:excess] if excess > 0 else ()


def plan_unloads(
    target: SlotRoom,
    need_bytes: int,
    free_bytes: int,
    slots: Sequence[SlotRoom],
    max_warm_models: int,
) -> tuple[Unload, ...] | None:
    """What to unload so ``need_bytes`` fit for a load on ``target``, or None if it cannot.

    The target's own overflow goes first (it drops it anyway); then the least recently used
    models of idle slots on the same device, the target's other models among them; only as
    many as needed.
    """
    own = own_overflow(target, max_warm_models)
    room = free_bytes + sum(m.size_bytes for m in own)
    plan = [Unload(target.slot_id, m.load_key, m.size_bytes) for m in own]
    if room >= need_bytes:
        return tuple(plan)
    dropped = {m.load_key for m in own}
    others = [
        (m.last_used, s.slot_id, m)
        for s in slots
        if s.device == target.device and (s.idle or s.slot_id == target.slot_id)
        for m in s.models
        if not (s.slot_id == target.slot_id and m.load_key in dropped)
    ]
    for _, slot_id, model in sorted(others, key=lambda item: (item[0], item[1])):
        plan.append(Unload(slot_id, model.load_key, model.size_bytes))
        room += model.size_bytes
        if room >= need_bytes:
            return tuple(plan)
    return None


def admit(
    engine: str,
    load_key: str,
    need_bytes: int,
    slots: Sequence[SlotRoom],
    devices: Mapping[int, DeviceRoom],
    max_warm_models: int,
) -> Admission:
    """The slot to run a job of ``engine`` / ``load_key`` on, or why none fits now."""
    candidates = [s for s in slots if s.engine == engine and s.free]
    sick = [s.device for s in candidates if s.device is not None and not _healthy(s, devices)]
    sick_devices = sorted({d for d in sick if d is not None})
    for slot in candidates:
        if slot.device is None or (slot.holds(load_key) and _healthy(slot, devices)):
            return Admitted(slot.slot_id, 0, 0)
    best: tuple[tuple[int, int, int], Admitted] | None = None
    for order, slot in enumerate(candidates):
        device = devices.get(slot.device) if slot.device is not None else None
        if device is None or not device.healthy:
            continue
        plan = plan_unloads(slot, need_bytes, device.free_bytes, slots, max_warm_models)
        if plan is None:
            continue
        unload = sum(u.size_bytes for u in plan)
        # Least unloading first; on a tie, a slot that holds nothing, where the new model
        # is the natural fit (the other slot's model goes either way).
        rank = (unload, 1 if slot.models else 0, order)
        if best is None or rank < best[0]:
            best = (rank, Admitted(slot.slot_id, need_bytes, unload))
    if best is not None:
        return best[1]
    return _unfit(engine, need_bytes, candidates, slots, devices, sick_devices)


def _healthy(slot: SlotRoom, devices: Mapping[int, DeviceRoom]) -> bool:
    device = devices.get(slot.device) if slot.device is not None else None
    return device is not None and device.healthy


def _unfit(
    engine: str,
    need_bytes: int,
    candidates: Sequence[SlotRoom],
    slots: Sequence[SlotRoom],
    devices: Mapping[int, DeviceRoom],
    sick: Sequence[int],
) -> Unfit:
    mine = {s.device for s in slots if s.engine == engine and s.device is not None}
    usable = [devices[d] for d in mine if d in devices]
    largest = max((d.total_bytes for d in usable), default=0)
    if usable and need_bytes > largest:
        return Unfit(
            False,
            f"needs {gib(need_bytes)} of GPU memory; the largest GPU of the {engine} slots "
            f"here has {gib(largest)}",
        )
    if candidates and all(not _healthy(s, devices) for s in candidates):
        gpus = ", ".join(str(d) for d in sick)
        return Unfit(True, f"every free {engine} slot is on a suspect GPU ({gpus})")
    return Unfit(
        True,
        f"{gib(need_bytes)} of GPU memory do not fit now: the {engine} slots' GPUs are in use",
    )


def largest_admissible(
    slots: Sequence[SlotRoom], devices: Mapping[int, DeviceRoom], headroom_bytes: int
) -> int | None:
    """The largest job (without headroom) some free GPU slot could take now; None when no
    slot has a GPU (nothing to govern)."""
    gpu_slots = [s for s in slots if s.device is not None]
    if not gpu_slots:
        return None
    best = 0
    for slot in gpu_slots:
        device = devices.get(slot.device) if slot.device is not None else None
        if not slot.free or device is None or not device.healthy:
            continue
        releasable = sum(
            m.size_bytes for s in slots if s.device == slot.device and s.idle for m in s.models
        )
        best = max(best, device.free_bytes + releasable - headroom_bytes)
    return max(0, best)
