"""Which slots each lane serves (pure): ``--lanes one`` or ``--lanes per-gpu``.

``one`` (the default) is the Rust worker's shape: one studio identity for every slot.
``per-gpu`` makes one lane per GPU index named in the slot list, in index order; the first
keeps the top-level identity of config.toml (an existing registration carries over), the
others ``[lane.gpuN]`` tables. The studio offers a worker one job at a time, so a lane per
GPU is what keeps every GPU busy; a lane shows itself to the studio's operator by its
``machineName``, ``<machine name>/gpuN`` (the register request has no label field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from supervisor.config import LaneMode
from supervisor.errors import SlotSpecError, UsageError
from supervisor.pool.slot_spec import SlotSpec

ONE_LANE_NAME: Final = "main"


@dataclass(frozen=True)
class LanePlan:
    name: str  # ``main`` (one lane) or ``gpuN``: ``--lane NAME``, status, the metrics label
    table: str | None  # the ``[lane.<table>]`` holding its identity; None: top-level keys
    slot_ids: frozenset[str] | None  # None: every slot (one lane)
    machine_suffix: str = ""  # appended to capabilities.machineName

    @property
    def first(self) -> bool:
        return self.table is None


def plan_lanes(specs: list[SlotSpec], mode: LaneMode) -> list[LanePlan]:
    """The lanes for ``specs``. Raises SlotSpecError when ``per-gpu`` meets a slot on no
    GPU (it would belong to no lane)."""
    if mode == "one":
        return [LanePlan(ONE_LANE_NAME, None, None)]
    unpinned = [s for s in specs if s.gpu is None]
    if unpinned:
        names = ", ".join(f"`{s.engine}`" for s in unpinned)
        raise SlotSpecError(
            f"--lanes per-gpu needs every slot on a GPU (engine@N), but {names} names none; "
            "add @N, or use --lanes one"
        )
    gpus = sorted({s.gpu for s in specs if s.gpu is not None})
    lanes = []
    for i, gpu in enumerate(gpus):
        name = f"gpu{gpu}"
        slots = frozenset(s.slot_id for s in specs if s.gpu == gpu)
        lanes.append(LanePlan(name, None if i == 0 else name, slots, f"/{name}"))
    return lanes


def pick_lanes(lanes: list[LanePlan], name: str | None) -> list[LanePlan]:
    """Every lane, or the one called ``name``. Raises UsageError for an unknown name."""
    if name is None:
        return lanes
    chosen = [lane for lane in lanes if lane.name == name]
    if not chosen:
        known = ", ".join(lane.name for lane in lanes)
        raise UsageError(f"no lane `{name}` here; the lanes are {known}")
    return chosen
