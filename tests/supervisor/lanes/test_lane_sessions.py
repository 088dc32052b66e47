"""Lanes in the real supervisor (engine hosts as subprocesses, real ZeroMQ) against a
scripted studio peer, on two simulated GPUs: one session per lane, each advertising its
own GPU and machine name, each serving only its slots, and a graceful stop that drains
every lane and closes each session with 1000."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from protocol import studio
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.config import LaneIdentity, load_config
from supervisor.exit_codes import ExitCode
from supervisor.machine_facts import machine_name
from tests.support.studio_peer import PeerConnection, StudioPeer, make_offer, running_peer
from tests.support.supervisor_harness import TOKEN, RunningSupervisor, running_supervisor

pytestmark = pytest.mark.anyio

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
GPU1_TOKEN = "tok-gpu1-SECRET-5151"


def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = tmp_path / "gpus.json"
    devices = [
        {"index": 0, "name": "Sim 24G", "total_mib": 24576},
        {"index": 1, "name": "Sim 48G", "total_mib": 49152},
    ]
    gpus.write_text(json.dumps({"devices": devices}))
    monkeypatch.setenv("STUDIO_WORKER_SIMULATED_GPUS", str(gpus))


def slow_offer(job_id: str) -> studio.Offer:
    task = LlmTask(messages=[ChatMessage("user", job_id)], max_tokens=4)
    return make_offer(job_id, task, SYNTHETIC, "synthetic-slow", vram_gb_estimate=1.0)


@contextlib.asynccontextmanager
async def two_lanes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faults: str, **config: object
) -> AsyncIterator[tuple[RunningSupervisor, dict[str, tuple[PeerConnection, studio.Hello]]]]:
    """The supervisor with a lane on each of two simulated GPUs (the second registered as
    ``w-2``), against a studio peer; yields it and both sessions, welcomed, by worker id."""
    two_gpus(tmp_path, monkeypatch)
    lanes = {"gpu1": LaneIdentity(worker_id="w-2", auth_token=GPU1_TOKEN)}
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path,
            peer.base_url,
            engines="synthetic@0,synthetic@1",
            lanes="per-gpu",
            faults=faults,
            lane=lanes,
            **config,
        ) as run,
    ):
        yield run, await welcome_each(peer)


async def welcome_each(peer: StudioPeer) -> dict[str, tuple[PeerConnection, studio.Hello]]:
    """Both lanes' connections, by worker id, welcomed."""
    found: dict[str, tuple[PeerConnection, studio.Hello]] = {}
    for _ in range(2):
        conn = await peer.next_connection(timeout_s=30)
        found[conn.worker_id] = (conn, await conn.handshake(conn.worker_id))
    return found


async def test_each_lane_has_its_own_session_gpu_and_name_and_a_stop_drains_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_lanes(tmp_path, monkeypatch, "slow-job=1.5", vram_threshold_gb=40.0) as (
        run,
        sessions,
    ):
        assert set(sessions) == {"w-1", "w-2"}
        first, second = sessions["w-1"][1], sessions["w-2"][1]
        assert first.auth_token == TOKEN and second.auth_token == GPU1_TOKEN
        # Each lane shows itself by machine name and advertises its own card and slot.
        assert first.capabilities.machine_name == f"{machine_name()}/gpu0"
        assert second.capabilities.machine_name == f"{machine_name()}/gpu1"
        assert (first.capabilities.vram_total_gb, second.capabilities.vram_total_gb) == (24, 48)
        assert first.capabilities.max_concurrent_jobs == 1
        assert second.capabilities.max_concurrent_jobs == 1
        assert "synthetic" in first.capabilities.supported_models
        # A job on each lane at once: each runs on its own GPU's slot.
        a, b = sessions["w-1"][0], sessions["w-2"][0]
        await a.send(slow_offer("job-a"))
        await b.send(slow_offer("job-b"))
        await a.expect(studio.Accept)
        await b.expect(studio.Accept)
        jobs = {j.job_id: j.slot_id for lane in run.sup.lanes for j in lane.state.jobs.values()}
        assert jobs == {"job-a": "synthetic-gpu0-0", "job-b": "synthetic-gpu1-1"}
        # A lane's slots are its own: with its slot busy it rejects (busy), never running
        # the job on another lane's slot.
        await a.send(slow_offer("job-c"))
        reject = await a.expect(studio.Reject)
        assert (reject.job_id, reject.code) == ("job-c", "busy")
        # The first signal: both lanes stop taking offers, finish their job, close 1000.
        run.sup.stop.set()
        results = {}
        for conn in (a, b):
            done = await conn.expect(studio.CompleteJson, timeout_s=15)
            results[done.job_id] = conn.worker_id
            assert await conn.wait_closed() == 1000
        assert results == {"job-a": "w-1", "job-b": "w-2"}
        assert await run.wait_exit() == 0
    # The second lane's identity stayed in its own table; the first at the top level.
    cfg = load_config(run.config_path)
    assert (cfg.worker_id, cfg.lane["gpu1"].worker_id) == ("w-1", "w-2")


async def test_log_lines_ship_on_the_session_of_their_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_lanes(tmp_path, monkeypatch, "slow-job=0.5") as (run, sessions):
        b = sessions["w-2"][0]
        await b.send(slow_offer("job-b"))
        await b.expect(studio.Accept)
        with anyio.fail_after(15):
            shipped: list[studio.LogEntry] = []
            while not any(e.message.startswith("json result sent job job-b") for e in shipped):
                batch = await b.expect(
                    studio.LogBatch, skip=(studio.Heartbeat, studio.CompleteJson)
                )
                shipped.extend(batch.entries)
        assert any(e.message.startswith("offer received job-b") for e in shipped)
        # The other lane's session never sees this job's lines.
        a = sessions["w-1"][0]
        run.sup.stop.set()
        assert await a.wait_closed() == 1000
        seen_by_a = [e for f in a.received if isinstance(f, studio.LogBatch) for e in f.entries]
        assert seen_by_a, "the first lane ships its own (and the supervisor-wide) lines"
        assert not [e for e in seen_by_a if e.job_id == "job-b"]


async def test_a_lane_failure_a_restart_may_cure_stops_every_lane_with_its_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with two_lanes(tmp_path, monkeypatch, "slow-job=1") as (run, sessions):
        a, b = sessions["w-1"][0], sessions["w-2"][0]
        await b.send(studio.Error(code="internal_error", message="studio restarting"))
        # The other lane drains and closes normally; the worker exits with the studio's
        # fatal code, which the service manager restarts, whole.
        assert await a.wait_closed() == 1000
        assert await run.wait_exit() == ExitCode.STUDIO_FATAL
    assert run.sup.stop_reason == "lane gpu1: ws fatal: internal_error: studio restarting"
