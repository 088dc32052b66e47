"""Admission, slot choice and unload plans as pure tables (no NVML, no process)."""

from __future__ import annotations

from supervisor.gpu.admission import (
    Admitted,
    DeviceRoom,
    ModelRoom,
    SlotRoom,
    Unfit,
    Unload,
    admit,
    largest_admissible,
    need_bytes,
    plan_unloads,
)
from supervisor.gpu.ledger import MemoryLedger, Reservation

GIB = 2**30
HEADROOM = GIB // 2


def gpu(index: int = 0, total_gib: float = 24, free_gib: float = 24, healthy: bool = True):
    return DeviceRoom(index, int(total_gib * GIB), int(free_gib * GIB), healthy)


def model(key: str, size_gib: float, last_used: float = 0.0) -> ModelRoom:
    return ModelRoom(key, int(size_gib * GIB), last_used)


def slot(
    slot_id: str,
    *models: ModelRoom,
    device: int | None = 0,
    free: bool = True,
    idle: bool = True,
    engine: str = "synthetic",
) -> SlotRoom:
    return SlotRoom(slot_id, engine, device, free, idle, tuple(models))


NEED_14 = need_bytes(14 * GIB, 0, HEADROOM)


def test_need_is_the_larger_of_estimate_and_measured_peak_plus_headroom() -> None:
    assert need_bytes(14 * GIB, 0, HEADROOM) == 14 * GIB + HEADROOM
    assert need_bytes(4 * GIB, 9 * GIB, HEADROOM) == 9 * GIB + HEADROOM
    assert need_bytes(0, 0, 0) == 0


def test_the_slot_holding_the_model_needs_nothing() -> None:
    slots = [slot("a"), slot("b", model("x", 14))]
    got = admit("synthetic", "x", NEED_14, slots, {0: gpu(free_gib=10)}, 1)
    assert got == Admitted("b", 0, 0)


def test_a_free_fit_beats_unloading() -> None:
    slots = [slot("a", model("x", 14), device=0), slot("b", device=1)]
    devices = {0: gpu(0, free_gib=10), 1: gpu(1, free_gib=24)}
    assert admit("synthetic", "y", NEED_14, slots, devices, 1) == Admitted("b", NEED_14, 0)


def test_an_empty_slot_wins_when_the_unloading_is_the_same() -> None:
    slots = [slot("a", model("x", 14)), slot("b")]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu(free_gib=10)}, 1)
    assert got == Admitted("b", NEED_14, 14 * GIB)


def test_swapping_its_own_small_model_beats_unloading_a_big_one() -> None:
    slots = [slot("a", model("x", 14)), slot("b", model("small", 2))]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu(free_gib=8)}, 1)
    # b drops its 2 GiB itself and still needs a's 14: 16 GiB; a drops its own 14: less.
    assert got == Admitted("a", NEED_14, 14 * GIB)


def test_the_other_slot_unloads_when_only_it_holds_memory() -> None:
    slots = [slot("a", model("x", 14), free=False), slot("b")]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu(free_gib=10)}, 1)
    assert got == Admitted("b", NEED_14, 14 * GIB)


def test_a_busy_slots_model_cannot_be_unloaded_so_it_is_busy() -> None:
    slots = [slot("a", model("x", 14), free=False, idle=False), slot("b")]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu(free_gib=10)}, 1)
    assert isinstance(got, Unfit) and got.transient
    assert "in use" in got.reason


def test_memory_held_by_other_processes_is_busy_not_final() -> None:
    got = admit("synthetic", "y", NEED_14, [slot("a")], {0: gpu(free_gib=4)}, 1)
    assert isinstance(got, Unfit) and got.transient


def test_larger_than_any_gpu_is_final() -> None:
    need = need_bytes(30 * GIB, 0, HEADROOM)
    got = admit("synthetic", "y", need, [slot("a")], {0: gpu()}, 1)
    assert isinstance(got, Unfit) and not got.transient
    assert "30.5 GiB" in got.reason and "24.0 GiB" in got.reason


def test_slots_on_a_suspect_gpu_take_nothing() -> None:
    slots = [slot("a", model("y", 14))]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu(healthy=False)}, 1)
    assert isinstance(got, Unfit) and got.transient and "suspect" in got.reason


def test_a_slot_without_a_gpu_is_not_governed() -> None:
    got = admit("synthetic", "y", NEED_14, [slot("cpu", device=None)], {}, 1)
    assert got == Admitted("cpu", 0, 0)


def test_only_the_routed_engines_free_slots_are_candidates() -> None:
    slots = [slot("l", engine="llama"), slot("s", free=False), slot("s2")]
    got = admit("synthetic", "y", NEED_14, slots, {0: gpu()}, 1)
    assert isinstance(got, Admitted) and got.slot_id == "s2"


def test_unload_plan_is_least_recently_used_first_and_no_more_than_needed() -> None:
    target = slot("t")
    slots = [
        target,
        slot("a", model("a1", 6, last_used=5), model("a2", 6, last_used=9)),
        slot("b", model("b1", 6, last_used=1)),
        slot("busy", model("c1", 6, last_used=0), idle=False, free=False),
    ]
    plan = plan_unloads(target, 10 * GIB, 0, slots, 1)
    assert plan == (Unload("b", "b1", 6 * GIB), Unload("a", "a1", 6 * GIB))


def test_unload_plan_starts_with_the_targets_own_overflow() -> None:
    target = slot("t", model("old", 4, last_used=1), model("new", 4, last_used=2))
    plan = plan_unloads(target, 5 * GIB, 2 * GIB, [target], max_warm_models=2)
    assert plan == (Unload("t", "old", 4 * GIB),)
    assert plan_unloads(target, 30 * GIB, 2 * GIB, [target], 2) is None


def test_nothing_to_unload_when_it_fits() -> None:
    target = slot("t")
    assert plan_unloads(target, 5 * GIB, 6 * GIB, [target], 1) == ()


def test_largest_admissible_counts_idle_models_and_free_slots_only() -> None:
    slots = [slot("a", model("x", 14)), slot("b")]
    assert largest_admissible(slots, {0: gpu(free_gib=10)}, HEADROOM) == 24 * GIB - HEADROOM
    busy = [slot("a", model("x", 14), free=False, idle=False), slot("b")]
    assert largest_admissible(busy, {0: gpu(free_gib=10)}, HEADROOM) == 10 * GIB - HEADROOM
    nobody_free = [slot("a", model("x", 14), free=False, idle=False)]
    assert largest_admissible(nobody_free, {0: gpu(free_gib=10)}, HEADROOM) == 0
    assert largest_admissible([slot("cpu", device=None)], {}, HEADROOM) is None
    assert largest_admissible(slots, {0: gpu(free_gib=10, healthy=False)}, HEADROOM) == 0


def test_ledger_keeps_measured_sizes_and_drops_a_dead_hosts_memory() -> None:
    ledger = MemoryLedger()
    ledger.attach("a", 0)
    ledger.update_resident("a", [("x", 5)], now=1.0)
    ledger.record_size("a", "x", 7 * GIB)
    assert ledger.update_resident("a", [("x", 5), ("y", 3)], now=2.0) == []
    held = ledger.holdings("a")
    assert held is not None and [m.size_bytes for m in held.models.values()] == [7 * GIB, 3]
    assert ledger.update_resident("a", [("y", 3)], now=3.0) == ["x"]
    ledger.update_resident("a", [("x", 1)], now=4.0)
    assert ledger.holdings("a").models["x"].size_bytes == 7 * GIB  # type: ignore[union-attr]
    ledger.reserve("job", Reservation(0, "a", "z", 2 * GIB))
    assert ledger.reserved_on(0) == 2 * GIB
    ledger.clear("a")
    assert ledger.holdings("a").models == {}  # type: ignore[union-attr]
    assert ledger.reserved_on(0) == 0


def test_ledger_peaks_grow_only() -> None:
    ledger = MemoryLedger()
    ledger.record_peak("x", 10)
    ledger.record_peak("x", 8)
    ledger.record_size("a", "x", 6)
    assert ledger.peaks() == {"x": 10}
    ledger.record_peak("x", 12)
    assert ledger.peaks() == {"x": 12}
