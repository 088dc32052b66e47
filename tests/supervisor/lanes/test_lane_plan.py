"""Which slots each lane serves, and how a lane's log line finds its session (pure)."""

from __future__ import annotations

import logging

import pytest

from supervisor.errors import SlotSpecError, UsageError
from supervisor.lanes.context import CURRENT_LANE, LaneTagFilter
from supervisor.lanes.plan import LanePlan, pick_lanes, plan_lanes
from supervisor.pool.slot_spec import parse_engines


def test_one_lane_serves_every_slot_under_the_top_level_identity() -> None:
    specs = parse_engines("sdcpp@0,sdcpp@1,llama")
    assert plan_lanes(specs, "one") == [LanePlan("main", None, None)]


def test_per_gpu_makes_a_lane_per_gpu_in_index_order_the_first_on_the_top_level() -> None:
    specs = parse_engines("llama@3,sdcpp@0,sdcpp@3,sdcpp@1", with_synthetic=False)
    lanes = plan_lanes(specs, "per-gpu")
    assert [(lane.name, lane.table, lane.machine_suffix) for lane in lanes] == [
        ("gpu0", None, "/gpu0"),
        ("gpu1", "gpu1", "/gpu1"),
        ("gpu3", "gpu3", "/gpu3"),
    ]
    assert lanes[0].first and not lanes[1].first
    assert lanes[2].slot_ids == frozenset({"llama-gpu3-0", "sdcpp-gpu3-1"})


def test_per_gpu_refuses_a_slot_on_no_gpu() -> None:
    specs = parse_engines("sdcpp@0,llama")  # llama, and the synthetic slot added by default
    with pytest.raises(SlotSpecError) as caught:
        plan_lanes(specs, "per-gpu")
    assert "`llama`, `synthetic` names none" in str(caught.value)
    assert "--lanes one" in str(caught.value)


def test_a_lane_is_picked_by_name() -> None:
    lanes = plan_lanes(parse_engines("sdcpp@0,sdcpp@1", with_synthetic=False), "per-gpu")
    assert pick_lanes(lanes, None) == lanes
    assert pick_lanes(lanes, "gpu1") == [lanes[1]]
    with pytest.raises(UsageError, match="no lane `gpu7` here; the lanes are gpu0, gpu1"):
        pick_lanes(lanes, "gpu7")


def test_log_records_carry_the_lane_of_the_task_that_logs_them() -> None:
    tag = LaneTagFilter()
    outside = logging.LogRecord("supervisor", logging.INFO, "f", 1, "hi", None, None)
    assert tag.filter(outside)
    assert (outside.lane, outside.lane_tag) == (None, "")
    token = CURRENT_LANE.set("gpu1")
    try:
        inside = logging.LogRecord("supervisor", logging.INFO, "f", 1, "hi", None, None)
        tag.filter(inside)
        assert (inside.lane, inside.lane_tag) == ("gpu1", "[gpu1] ")
    finally:
        CURRENT_LANE.reset(token)
