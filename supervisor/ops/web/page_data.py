"""The status page's JSON, built at the moment of asking from what ``supervisor status``
reads (``build_status``: lanes, slots, GPUs) plus what only the page shows: each running
job's progress and prompt preview, the finished-jobs history, an hour of per-minute totals
and the VRAM threshold each lane advertises. Pure reads: building it changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from supervisor import __version__
from supervisor.config import WorkerConfig, current_config
from supervisor.errors import WorkerError
from supervisor.job_history import HISTORY_JOBS, FinishedJob, MinuteTotals, merged_minutes
from supervisor.lane_identity import lane_view
from supervisor.lanes.lane import Lane
from supervisor.ops.status_report import StatusReport, build_status
from supervisor.pool.engine_pool import EnginePool
from supervisor.session_state import SessionPhase

# What the progress of each phase counts, as the hosts report it (``protocol.ipc.Progress``).
PHASE_UNITS = {"downloading": "bytes", "loading": "parts", "generating": "steps"}


class RunningJob(msgspec.Struct):
    job_id: str
    lane: str
    kind: str
    model: str
    engine: str
    slot: str
    phase: str
    step: int
    total: int
    unit: str  # bytes, parts, steps (tokens for llm jobs are counted as steps)
    detail: str  # the file being downloaded or loaded, when the host names one
    running_s: float
    prompt_preview: str


class LanePage(msgspec.Struct):
    """What the page shows of a lane beyond ``LaneView``."""

    name: str
    reconnect_attempt: int | None  # while it is not welcomed after a lost session
    vram_threshold_gb: float | None  # None when the config cannot be read


class PageState(msgspec.Struct):
    version: str
    now: float  # Unix time, for the page's clocks and charts
    status: StatusReport
    lanes: list[LanePage]
    jobs: list[RunningJob]
    history: list[FinishedJob]
    minutes: list[MinuteTotals]
    actions: bool  # whether the page may offer pause / resume / threshold at all
    secret_file: str | None  # where the action secret is, for the page to say


def _unit(kind: str, phase: str) -> str:
    # An llm host counts generated tokens as its steps.
    return "tokens" if kind == "llm" and phase == "generating" else PHASE_UNITS.get(phase, "")


def _running(lane: Lane, now: float) -> list[RunningJob]:
    return [
        RunningJob(
            j.job_id,
            lane.name,
            j.kind,
            j.model,
            j.engine,
            j.slot_id,
            j.phase,
            j.step,
            j.total,
            _unit(j.kind, j.phase),
            j.detail,
            round(now - j.started, 1),
            j.prompt_preview,
        )
        for j in lane.state.jobs.values()
    ]


def _lane_page(lane: Lane, cfg: WorkerConfig | None) -> LanePage:
    state = lane.state
    attempt = state.reconnect_attempt if state.phase is not SessionPhase.WELCOMED else 0
    threshold = lane_view(cfg, lane.table, lane.name).vram_threshold_gb if cfg else None
    return LanePage(lane.name, attempt or None, threshold)


def _history(lanes: list[Lane]) -> list[FinishedJob]:
    jobs = [
        msgspec.structs.replace(job, lane=lane.name)
        for lane in lanes
        for job in lane.state.history.recent()
    ]
    jobs.sort(key=lambda j: j.finished_at, reverse=True)
    return jobs[:HISTORY_JOBS]


def build_page(
    pool: EnginePool, lanes: list[Lane], config_path: Path | None, secret_file: Path | None
) -> PageState:
    wall, mono = time.time(), time.monotonic()
    cfg: WorkerConfig | None = None
    if config_path is not None:
        try:
            cfg = current_config(config_path)
        except WorkerError:
            cfg = None  # the threshold shows as unknown; the rest of the page still works
    return PageState(
        version=__version__,
        now=wall,
        status=build_status(pool, lanes),
        lanes=[_lane_page(lane, cfg) for lane in lanes],
        jobs=[job for lane in lanes for job in _running(lane, mono)],
        history=_history(lanes),
        minutes=merged_minutes([lane.state.history.per_minute(wall) for lane in lanes]),
        actions=secret_file is not None,
        secret_file=str(secret_file) if secret_file is not None else None,
    )
