"""GPU memory governance end to end, on simulated GPUs: a studio peer on 127.0.0.1, the
real supervisor in-process, real synthetic engine host processes pinned to a simulated
24 GiB card (``STUDIO_WORKER_SIMULATED_GPUS``), whose memory is what the live hosts wrote
into their allocation files plus ``foreign_mib``. Nothing here tells the supervisor what
the card holds: it reads it, as it reads NVML on a real card.

Every case runs twice: with per-process figures, and with ``per_process: false`` (a
container, where the driver's PIDs match none of ours and sizes come from the card's
used-memory change around each load).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from engines.faults import FaultModel
from protocol import studio
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.gpu.health import GpuHealth
from supervisor.pool.slot import Slot
from supervisor.pool.slot_state import SlotState
from tests.support.studio_peer import PeerConnection, make_offer, running_peer
from tests.support.supervisor_harness import RunningSupervisor, running_supervisor

pytestmark = pytest.mark.anyio

GIB = 2**30
SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
TWO_SLOTS = "synthetic@0,synthetic@0"
TIMEOUT_S = 20.0


@pytest.fixture(params=[True, False], ids=["per-process", "container"])
def sim_gpu(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A 24 GiB simulated card; returns a function that rewrites its JSON (foreign_mib,
    healthy) while the worker runs."""
    path = tmp_path / "gpus.json"
    device: dict[str, Any] = {
        "index": 0,
        "name": "Sim 24G",
        "total_mib": 24576,
        "foreign_mib": 0,
        "per_process": request.param,
    }

    def write(**changes: Any) -> None:
        device.update(changes)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"devices": [device]}))
        tmp.replace(path)

    write()
    monkeypatch.setenv("STUDIO_WORKER_SIMULATED_GPUS", str(path))
    monkeypatch.setenv("STUDIO_WORKER_GPU_SAMPLE_S", "0.05")
    monkeypatch.setenv("STUDIO_WORKER_FAULTS", "1")
    return write


def llm(text: str = "hello") -> LlmTask:
    return LlmTask(messages=[ChatMessage("user", text)], max_tokens=8)


def offer(job_id: str, model: str, gib: float = 14.0) -> studio.Offer:
    return make_offer(job_id, llm(job_id), SYNTHETIC, model, vram_gb_estimate=gib)


@asynccontextmanager
async def worker(
    tmp_path: Path, engines: str = TWO_SLOTS, faults: str = "", **config: Any
) -> AsyncIterator[tuple[RunningSupervisor, PeerConnection]]:
    settings: dict[str, Any] = {
        "vram_threshold_gb": 24.0,
        "vram_headroom_mb": 512,
        "vram_unload_timeout_s": 1.0,
        "crash_loop_cooldown_s": 1.0,
    }
    settings.update(config)
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, engines=engines, faults=faults, **settings
        ) as run,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        assert await run.sup.pool.wait_ready(TIMEOUT_S)
        yield run, conn


async def until(
    run: RunningSupervisor, what: str, check: Callable[[], bool], timeout_s: float = TIMEOUT_S
) -> None:
    """Re-check ``check`` after every reading of the simulated GPU (every 0.05 s here): the
    conditions are the pool's own state, which the samples follow."""
    try:
        with anyio.fail_after(timeout_s):
            while not check():
                await run.sup.pool.gpu.next_sample()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


async def done(conn: PeerConnection, job_id: str) -> studio.CompleteJson:
    assert (await conn.expect(studio.Accept, TIMEOUT_S)).job_id == job_id
    result = await conn.expect(studio.CompleteJson, TIMEOUT_S)
    assert result.job_id == job_id
    return result


async def next_reject_or_accept(conn: PeerConnection) -> studio.Reject | studio.Accept:
    while True:
        frame = await conn.recv(TIMEOUT_S)
        if isinstance(frame, studio.Reject | studio.Accept):
            return frame


def slots(run: RunningSupervisor) -> list[Slot]:
    return run.sup.pool.slots


def resident(run: RunningSupervisor, slot: Slot) -> list[str]:
    held = run.sup.pool.gpu.ledger.holdings(slot.slot_id)
    return list(held.models) if held is not None else []


def used_gib(run: RunningSupervisor) -> float:
    return run.sup.pool.gpu.readings[0].used_bytes / GIB


def no_oom(run: RunningSupervisor) -> None:
    failures = run.sup.lanes[0].state.job_failures
    assert failures["vram_oom"] == 0 and failures["vram_unavailable"] == 0, failures


async def test_a_job_for_the_other_slot_evicts_the_warm_model(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path) as (run, conn):
        a, b = slots(run)
        await conn.send(offer("j1", "model-x"))
        await done(conn, "j1")
        assert resident(run, a) == ["synthetic:model-x"]
        await until(run, "model-x is on the card", lambda: used_gib(run) >= 14)
        await conn.send(offer("j2", "model-y"))
        await done(conn, "j2")
        assert resident(run, a) == [] and resident(run, b) == ["synthetic:model-y"]
        assert run.sup.pool.gpu.evictions[0] == 1
        no_oom(run)
        # The ledger measured the load instead of trusting the estimate.
        ledger = run.sup.pool.gpu.ledger
        await until(run, "model-y measured", lambda: ledger.cost("synthetic:model-y") is not None)
        cost = ledger.cost("synthetic:model-y")
        assert cost is not None and 13.9 * GIB < cost.size_bytes < 14.1 * GIB


async def test_busy_while_the_warm_model_is_in_use_then_served(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path, faults="slow-job=1.5") as (run, conn):
        a, _ = slots(run)
        await conn.send(offer("warm", FaultModel.SLOW))
        await done(conn, "warm")
        assert resident(run, a) == [f"synthetic:{FaultModel.SLOW}"]
        # The same model again: it runs on a, where it is loaded, for 1.5 s.
        await conn.send(offer("slow", FaultModel.SLOW))
        assert (await conn.expect(studio.Accept, TIMEOUT_S)).job_id == "slow"
        await until(run, "a is busy", lambda: a.state is SlotState.BUSY)
        await conn.send(offer("j2", "model-y"))
        reject = await conn.expect(studio.Reject, TIMEOUT_S)
        assert (reject.job_id, reject.code) == ("j2", "busy")
        assert "do not fit now" in reject.reason
        await conn.expect(studio.CompleteJson, TIMEOUT_S)
        await until(run, "slot a is idle", lambda: a.is_idle)
        await conn.send(offer("j2", "model-y"))
        await done(conn, "j2")
        no_oom(run)


async def test_memory_held_by_others_lowers_the_threshold_and_rejects_busy(
    sim_gpu, tmp_path
) -> None:
    async with worker(tmp_path) as (run, conn):
        sim_gpu(foreign_mib=16 * 1024)
        with anyio.fail_after(TIMEOUT_S):
            while (await conn.expect(studio.Heartbeat)).capabilities.vram_threshold_gb > 8:
                pass
        await conn.send(offer("j1", "model-x"))
        reject = await conn.expect(studio.Reject, TIMEOUT_S)
        assert reject.code == "busy"
        sim_gpu(foreign_mib=0)
        with anyio.fail_after(TIMEOUT_S):
            while (await conn.expect(studio.Heartbeat)).capabilities.vram_threshold_gb < 12:
                pass
        await conn.send(offer("j1", "model-x"))
        await done(conn, "j1")
        no_oom(run)


async def test_a_job_larger_than_the_card_is_rejected_without_a_code(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path) as (_, conn):
        await conn.send(offer("huge", "model-huge", gib=30))
        reject = await conn.expect(studio.Reject, TIMEOUT_S)
        assert reject.code is None and "24.0 GiB" in reject.reason


async def test_out_of_memory_is_retried_once_then_fails_retryable(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path) as (run, conn):
        await conn.send(offer("oom", FaultModel.OOM, gib=2))
        assert (await conn.expect(studio.Accept, TIMEOUT_S)).job_id == "oom"
        fail = await conn.expect(studio.Fail, TIMEOUT_S)
        assert fail.retryable and "vram_oom" in fail.error
        assert run.sup.lanes[0].state.job_failures["vram_oom"] == 1
        assert not run.sup.pool.poison.is_poison("oom")
        assert all(s.restarts == 0 for s in slots(run)), "an OOM is no crash"
        # Tried twice on the same slot: the engine saw two jobs.
        (slot,) = [s for s in slots(run) if s.jobs_done]
        assert slot.jobs_done == 2


async def test_an_unload_that_frees_nothing_recycles_that_host(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path) as (run, conn):
        a, b = slots(run)
        await conn.send(offer("nofree", FaultModel.NOFREE))
        await done(conn, "nofree")
        await conn.send(offer("j2", "model-y"))
        await done(conn, "j2")
        # The card is free as soon as the old host is gone; the slot counts the restart
        # when it has reaped it, a moment later.
        await until(run, "a recycled", lambda: a.restarts == 1)
        assert a.restart_causes == {"unload_stuck": 1}
        assert resident(run, b) == ["synthetic:model-y"]
        no_oom(run)


async def test_a_killed_hosts_models_leave_the_ledger(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path) as (run, conn):
        a, _ = slots(run)
        await conn.send(offer("j1", "model-x"))
        await done(conn, "j1")
        await until(run, "loaded", lambda: used_gib(run) >= 14)
        old_pid = a.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await until(run, "a new host", lambda: a.pid not in (None, old_pid))
        assert resident(run, a) == []
        await until(run, "the card is free again", lambda: used_gib(run) < 1)


async def test_a_segfault_makes_the_gpu_suspect_until_a_probe_passes(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path, engines="synthetic@0") as (run, conn):
        gpu = run.sup.pool.gpu
        sim_gpu(healthy=False)
        await conn.send(offer("segv", FaultModel.SEGV, gib=1))
        assert (await conn.expect(studio.Accept, TIMEOUT_S)).job_id == "segv"
        assert (await conn.expect(studio.Fail, TIMEOUT_S)).retryable
        await until(run, "suspect", lambda: gpu.health[0].state is not GpuHealth.HEALTHY)
        await until(run, "probed and still suspect", lambda: "probe failed" in gpu.health[0].reason)
        await conn.send(offer("while-suspect", "model-x", gib=1))
        reject = await conn.expect(studio.Reject, TIMEOUT_S)
        assert reject.code == "busy" and "suspect" in reject.reason
        sim_gpu(healthy=True)
        await until(run, "healthy", lambda: gpu.health[0].state is GpuHealth.HEALTHY, 30)
        (slot,) = slots(run)
        await until(
            run, "serving again", lambda: slot.state is SlotState.READY and slot.is_free, 30
        )
        await conn.send(offer("after", "model-x", gib=1))
        await done(conn, "after")


@pytest.mark.parametrize("fault", ["backend-cpu", "wrong-device"])
async def test_a_gpu_slot_whose_host_is_not_on_its_gpu_is_parked(sim_gpu, tmp_path, fault) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, engines="synthetic@0", faults=fault, crash_loop_cooldown_s=60
        ) as run,
    ):
        (slot,) = slots(run)
        await until(run, "parked", lambda: slot.state is SlotState.FAILED)
        assert slot.restart_causes == {"wrong_device": 1}, "no restart loop: parked at once"
        assert slot.last_exit is not None
        assert run.sup.pool.models_per_kind() == {}, "a parked slot advertises nothing"


async def test_status_and_metrics_show_gpus_and_loaded_models(sim_gpu, tmp_path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from supervisor.cli.status_view import live_lines
    from supervisor.ops.control import ask, socket_path
    from supervisor.ops.metrics import WorkerCollector

    async with worker(tmp_path) as (run, conn):
        await conn.send(offer("j1", "model-x"))
        await done(conn, "j1")
        await until(
            run, "measured", lambda: run.sup.pool.gpu.ledger.cost("synthetic:model-x") is not None
        )
        reply = await anyio.to_thread.run_sync(ask, socket_path(run.config_path), "status")
        assert reply.status is not None
        (gpu,) = reply.status.gpus
        assert (gpu.index, gpu.name, gpu.health) == (0, "Sim 24G", "healthy")
        assert gpu.total_bytes == 24 * GIB and gpu.used_bytes >= 14 * GIB
        a = reply.status.slots[0]
        assert a.gpu_name == "Sim 24G" and a.gpu_uuid == gpu.uuid
        assert [m.load_key for m in a.models] == ["synthetic:model-x"]
        text = "\n".join(live_lines(reply.status))
        assert f"gpu 0: healthy Sim 24G {gpu.uuid} total 24.0GiB" in text
        assert "loaded: synthetic:model-x (14.0GiB)" in text
        registry = CollectorRegistry()
        registry.register(WorkerCollector(run.sup.pool, run.sup.lanes))
        metrics = generate_latest(registry).decode()
        assert 'studio_worker_gpu_memory_total_bytes{gpu="0"} 2.5769803776e+10' in metrics
        assert 'studio_worker_gpu_health{gpu="0",state="healthy"} 1.0' in metrics
        assert 'studio_worker_model_evictions_total{gpu="0"} 0.0' in metrics


async def test_a_model_unused_for_keep_alive_is_unloaded(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path, model_keep_alive_s=0.5) as (run, conn):
        a, _ = slots(run)
        await conn.send(offer("j1", "model-x"))
        await done(conn, "j1")
        await until(
            run, "unloaded for idleness", lambda: resident(run, a) == [] and used_gib(run) < 1
        )
        assert run.sup.pool.gpu.evictions[0] == 0, "an idle unload is no eviction"
        assert a.pid is not None and a.restarts == 0, "the host stays; only the model goes"


async def test_several_warm_models_per_slot_within_the_card(sim_gpu, tmp_path) -> None:
    async with worker(tmp_path, engines="synthetic@0", max_warm_models=2) as (run, conn):
        (a,) = slots(run)
        for job, model in (("j1", "m1"), ("j2", "m2"), ("j3", "m1")):
            await conn.send(offer(job, model, gib=6))
            await done(conn, job)
        assert resident(run, a) == ["synthetic:m2", "synthetic:m1"]  # least recent first
        await conn.send(offer("j4", "m3", gib=6))
        await done(conn, "j4")
        assert resident(run, a) == ["synthetic:m1", "synthetic:m3"]
        assert run.sup.pool.gpu.evictions[0] == 1
        no_oom(run)
