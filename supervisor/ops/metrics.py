"""Prometheus metrics and readiness, read from the live state at scrape time.

``WorkerCollector`` is a custom collector: every scrape walks the pool's slots and the
``WorkerState`` and turns what they hold right now into metric families. Nothing here
counts anything itself, so the metrics cannot disagree with ``supervisor status``; the few
series that need history (job durations, model load times, download bytes) are recorded
where the events happen (``WorkerState.finish_job``, ``Slot.progress_stats``) and only read
here. ``readiness`` answers ``/readyz``. This module never mutates the state and never
does I/O; ``metrics_server`` serves it over HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor.gpu.health import GpuHealth
from supervisor.lanes.lane import Lane
from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.slot_state import SlotState
from supervisor.pool.verdict import FINAL, LossCause
from supervisor.session_state import SessionPhase
from supervisor.stats import DurationHistogram
from supervisor.updates.state import STATUS as UPDATES

PREFIX: Final = "studio_worker"
# Always exported (as 0 until they happen), so rate() and alerts work from the first scrape.
JOB_OUTCOMES: Final = (
    "done",
    "failed_retryable",
    "failed_final",
    "rejected_busy",
    "rejected_paused",
)
RESTART_CAUSES: Final = tuple(c.value for c in LossCause if c not in FINAL)
SLOT_LABELS: Final = ("engine", "slot", "gpu")


def _lane_readiness(lane: Lane) -> tuple[bool, str]:
    state = lane.state
    if state.shutting_down:
        return False, "shutting down"
    if state.phase is not SessionPhase.WELCOMED:
        return False, f"not welcomed by the studio (session {state.phase.value})"
    slots = lane.pool.slots
    serving = [s for s in slots if s.is_serving]
    if not serving:
        states = ", ".join(f"{s.slot_id}={s.state.value}" for s in slots)
        return False, f"no engine slot is ready ({states})"
    who = f" as {state.worker_id}" if state.worker_id else ""
    return True, f"ready: welcomed{who}, {len(serving)} of {len(slots)} slots serving"


def readiness(pool: EnginePool, lanes: list[Lane]) -> tuple[bool, str]:
    """``/readyz``: welcomed by the studio and at least one slot serving, with the reason;
    with several lanes, ready while any lane is, and the reason names each lane."""
    del pool  # each lane reads its own share of it
    answers = [(lane.name, *_lane_readiness(lane)) for lane in lanes]
    if len(answers) == 1:
        return answers[0][1], answers[0][2]
    ready = any(ok for _, ok, _ in answers)
    return ready, "; ".join(f"lane {name}: {reason}" for name, _, reason in answers)


def _histogram_buckets(hist: DurationHistogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(b) else repr(b), float(n)) for b, n in hist.cumulative()]


class WorkerCollector(Collector):
    def __init__(self, pool: EnginePool, lanes: list[Lane]) -> None:
        self.pool = pool
        self.lanes = lanes

    def describe(self) -> list[Metric]:
        # Families depend on the live state; describing them would mean collecting.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._session()
        yield from self._jobs()
        yield from self._slots()
        yield from self._gpus()

    # --- session (per lane: one studio identity each) ------------------------------------

    def _session(self) -> Iterator[Metric]:
        phase = GaugeMetricFamily(
            f"{PREFIX}_session_phase",
            "Studio session phase (1 for the current one), per lane.",
            labels=["lane", "phase"],
        )
        reconnects = CounterMetricFamily(
            f"{PREFIX}_session_reconnects",
            "Studio sessions lost and retried since start.",
            labels=["lane"],
        )
        welcomed = CounterMetricFamily(
            f"{PREFIX}_sessions_welcomed",
            "Studio sessions that reached welcome since start.",
            labels=["lane"],
        )
        ack_age = GaugeMetricFamily(
            f"{PREFIX}_heartbeat_ack_age_seconds",
            "Seconds since the studio last acknowledged a heartbeat.",
            labels=["lane"],
        )
        paused = GaugeMetricFamily(
            f"{PREFIX}_paused", "1 while claiming is paused by the operator.", labels=["lane"]
        )
        for lane in self.lanes:
            state = lane.state
            for p in SessionPhase:
                phase.add_metric([lane.name, p.value], 1.0 if state.phase is p else 0.0)
            reconnects.add_metric([lane.name], state.reconnects)
            welcomed.add_metric([lane.name], state.sessions_welcomed)
            age = state.seconds_since_heartbeat_ack()
            if age is not None:
                ack_age.add_metric([lane.name], age)
            paused.add_metric([lane.name], float(state.paused))
        yield from (phase, reconnects, welcomed, ack_age, paused)
        ready, _ = readiness(self.pool, self.lanes)
        yield GaugeMetricFamily(
            f"{PREFIX}_ready", "1 when /readyz answers 200 (welcomed, a slot serving).", value=ready
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_update_available",
            "1 when the last update check found a newer studio-worker release.",
            value=float(UPDATES.available),
        )

    # --- jobs -----------------------------------------------------------------------------

    def _jobs(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            f"{PREFIX}_jobs",
            "Offers by outcome: done, failed_retryable, failed_final, rejected_busy, "
            "rejected_paused.",
            labels=["lane", "outcome"],
        )
        running = GaugeMetricFamily(
            f"{PREFIX}_jobs_running", "Jobs accepted and not yet finished.", labels=["lane"]
        )
        durations = HistogramMetricFamily(
            f"{PREFIX}_job_duration_seconds",
            "Accepted jobs, accept to result delivered (or failure), by kind and engine.",
            labels=["lane", "kind", "engine"],
        )
        failures = CounterMetricFamily(
            f"{PREFIX}_job_failures",
            "Jobs failed, by cause (vram_oom, ram_oom, signal, exit, hang, deadline, poison, ...).",
            labels=["lane", "reason"],
        )
        for lane in self.lanes:
            state = lane.state
            names = list(JOB_OUTCOMES) + sorted(set(state.job_outcomes) - set(JOB_OUTCOMES))
            for name in names:
                outcomes.add_metric([lane.name, name], state.job_outcomes[name])
            running.add_metric([lane.name], len(state.jobs))
            for (kind, engine), hist in sorted(state.job_seconds.items()):
                durations.add_metric([lane.name, kind, engine], _histogram_buckets(hist), hist.sum)
            for reason, count in sorted(state.job_failures.items()):
                failures.add_metric([lane.name, reason], count)
        yield from (outcomes, running, durations, failures)

    # --- slots ----------------------------------------------------------------------------

    def _slots(self) -> Iterator[Metric]:
        labels = list(SLOT_LABELS)
        slot_state = GaugeMetricFamily(
            f"{PREFIX}_slot_state",
            "Engine slot state (1 for the current one).",
            labels=[*labels, "state"],
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_engine_restarts",
            "Engine host restarts by cause (exit, signal, hang, deadline, stall, "
            "ready_timeout, handshake, spawn, wrong_device, vram_oom, ram_oom, unload_stuck, "
            "probe_failed, recycle).",
            labels=[*labels, "cause"],
        )
        jobs = CounterMetricFamily(
            f"{PREFIX}_slot_jobs", "Jobs the slot's hosts finished (any result).", labels=labels
        )
        rss = GaugeMetricFamily(
            f"{PREFIX}_host_rss_bytes", "Resident memory of the engine host.", labels=labels
        )
        vram = GaugeMetricFamily(
            f"{PREFIX}_host_vram_bytes", "GPU memory used by the engine host.", labels=labels
        )
        loads = GaugeMetricFamily(
            f"{PREFIX}_host_model_loads",
            "Models loaded by the current engine host (resets when the host restarts).",
            labels=labels,
        )
        load_time = HistogramMetricFamily(
            f"{PREFIX}_model_load_seconds", "Time to load a model into a host.", labels=labels
        )
        downloaded = CounterMetricFamily(
            f"{PREFIX}_download_bytes", "Model bytes downloaded by the slot's hosts.", labels=labels
        )
        for slot in self.pool.slots:
            gpu = "" if slot.spec.gpu is None else str(slot.spec.gpu)
            values = [slot.engine, slot.slot_id, gpu]
            for s in SlotState:
                slot_state.add_metric([*values, s.value], 1.0 if slot.state is s else 0.0)
            counts = {str(cause): n for cause, n in slot.restart_causes.items()}
            causes = list(RESTART_CAUSES) + sorted(set(counts) - set(RESTART_CAUSES))
            for cause in causes:
                restarts.add_metric([*values, cause], counts.get(cause, 0))
            jobs.add_metric(values, slot.jobs_done)
            hb = slot.last_heartbeat
            if hb is not None:
                rss.add_metric(values, hb.rss_bytes)
                loads.add_metric(values, hb.model_loads)
            host_vram = slot.vram_bytes()
            if host_vram is not None:
                vram.add_metric(values, host_vram)
            stats = slot.progress_stats
            load_time.add_metric(
                values, _histogram_buckets(stats.load_seconds), stats.load_seconds.sum
            )
            downloaded.add_metric(values, stats.download_bytes)
        yield from (slot_state, restarts, jobs, rss, vram, loads, load_time, downloaded)

    # --- GPUs -----------------------------------------------------------------------------

    def _gpus(self) -> Iterator[Metric]:
        gpu = self.pool.gpu
        total = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_total_bytes", "Memory of each GPU.", labels=["gpu"]
        )
        used = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_used_bytes",
            "Memory in use on each GPU (every process), as NVML last read it.",
            labels=["gpu"],
        )
        evictions = CounterMetricFamily(
            f"{PREFIX}_model_evictions",
            "Models unloaded to make room for another load on the GPU.",
            labels=["gpu"],
        )
        health = GaugeMetricFamily(
            f"{PREFIX}_gpu_health",
            "GPU health (1 for the current one): healthy, suspect, probing.",
            labels=["gpu", "state"],
        )
        for index, reading in sorted(gpu.readings.items()):
            label = str(index)
            total.add_metric([label], reading.total_bytes)
            used.add_metric([label], reading.used_bytes)
            evictions.add_metric([label], gpu.evictions[index])
            current = gpu.health[index].state if index in gpu.health else GpuHealth.HEALTHY
            for state in GpuHealth:
                health.add_metric([label, state.value], 1.0 if current is state else 0.0)
        yield from (total, used, evictions, health)
