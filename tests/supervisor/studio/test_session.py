"""The studio session end to end: the real supervisor (synthetic engine hosts as real
subprocesses) against a scripted studio peer on 127.0.0.1."""

from __future__ import annotations

import itertools
import logging
import time

import anyio
import pytest

from protocol import studio
from protocol.tasks import (
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelSource,
    Task,
)
from supervisor.cli.commands import set_threshold
from supervisor.ops.control import ask, socket_path
from tests.support.studio_peer import PeerConnection, StudioPeer, make_offer, running_peer
from tests.support.supervisor_harness import TOKEN, running_supervisor

pytestmark = pytest.mark.anyio

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))


def offer(
    job_id: str, task: Task, model: str = "synthetic", source: ModelSource = SYNTHETIC
) -> studio.Offer:
    return make_offer(job_id, task, source, model, vram_gb_estimate=4.0)


def image_task(prompt: str = "an aurora fox") -> ImageTask:
    return ImageTask(prompt=prompt, ext="png")


def llm_task(text: str = "hello there") -> LlmTask:
    return LlmTask(
        messages=[ChatMessage("system", "be brief"), ChatMessage("user", text)], max_tokens=4
    )


async def welcomed(peer: StudioPeer) -> tuple[PeerConnection, studio.Hello]:
    conn = await peer.next_connection()
    hello = await conn.handshake()
    return conn, hello


async def test_upgrade_headers_hello_and_nothing_before_welcome(tmp_path):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url):
        conn = await peer.next_connection()
        assert conn.headers["authorization"] == f"Bearer {TOKEN}"
        assert conn.headers["sec-websocket-protocol"] == "studio-worker-v1"
        assert conn.worker_id == "w-1"
        hello = await conn.recv()
        assert isinstance(hello, studio.Hello)
        assert hello.auth_token == TOKEN
        caps = hello.capabilities
        assert caps.engine == "multi"
        assert caps.task_kinds == ["image", "llm", "audio_stt", "audio_tts", "video"]
        assert "synthetic-image" in caps.supported_models_per_kind["image"]
        assert "*" not in caps.supported_models
        assert caps.max_concurrent_jobs == 1
        # Heartbeats are due every 0.2 s, but nothing may follow hello before welcome.
        with anyio.move_on_after(1.0) as scope:
            early = await conn.recv(timeout_s=2.0)
            raise AssertionError(f"frame before welcome: {early!r}")
        assert scope.cancelled_caught
        await conn.send(studio.Welcome(worker_id="w-1", server_time="now"))
        hb = await conn.expect(studio.Heartbeat)
        assert hb.current_job_id is None


async def test_heartbeat_cadence_and_live_threshold_change(tmp_path):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, hello = await welcomed(peer)
        assert hello.capabilities.vram_threshold_gb == 12.0
        stamps = []
        for _ in range(4):
            hb = await conn.expect(studio.Heartbeat)
            stamps.append(time.monotonic())
            await conn.send(studio.HeartbeatAck())
            assert hb.capabilities.vram_threshold_gb == 12.0
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert all(0.1 < g < 0.6 for g in gaps), gaps
        set_threshold(run.config_path, 20.0)
        with anyio.fail_after(5):
            while (await conn.expect(studio.Heartbeat)).capabilities.vram_threshold_gb != 20.0:
                pass
        assert run.sup.lanes[0].state.last_heartbeat_ack is not None


async def test_llm_job_round_trip_with_full_prompt_and_logs(tmp_path):
    long_text = "x" * 300  # longer than the 200-char preview: the full prompt must travel
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-llm", llm_task(long_text)))
        assert (await conn.expect(studio.Accept)).job_id == "job-llm"
        done = await conn.expect(studio.CompleteJson)
        assert done.job_id == "job-llm"
        assert done.prompt == long_text
        assert done.result["object"] == "chat.completion"
        await conn.send(studio.CompleteAck(job_id="job-llm"))
        with anyio.fail_after(5):
            while True:
                batch = await conn.expect(studio.LogBatch, skip=(studio.Heartbeat,))
                if any(
                    e.message.startswith("json result sent") and e.job_id == "job-llm"
                    for e in batch.entries
                ):
                    break


async def test_image_job_is_uploaded_as_multipart_and_no_frame_follows(tmp_path):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-img", image_task("a red fox")))
        await conn.expect(studio.Accept)
        with anyio.fail_after(10):
            while not peer.uploads:
                frame = await conn.recv()
                assert isinstance(frame, studio.Heartbeat | studio.LogBatch), frame
        up = peer.uploads[0]
        assert (up.worker_id, up.job_id) == ("w-1", "job-img")
        assert up.headers["authorization"] == f"Bearer {TOKEN}"
        assert [p.name for p in up.parts] == ["prompt", "ext", "image"]
        assert up.parts[0].data == b"a red fox"
        assert up.parts[1].data == b"png"
        assert up.parts[2].filename == "job-img.png"
        assert up.parts[2].content_type == "image/png"
        assert up.parts[2].data.startswith(b"\x89PNG")
        # No completeJson / fail / readyForMore after an upload: only heartbeats and logs.
        with anyio.move_on_after(0.6):
            while True:
                frame = await conn.recv()
                assert isinstance(frame, studio.Heartbeat | studio.LogBatch), frame


async def test_upload_409_fails_retryable_and_5xx_is_retried(tmp_path):
    peer = StudioPeer(upload_statuses=[409])
    async with running_peer(peer), running_supervisor(tmp_path, peer.base_url):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-409", image_task()))
        await conn.expect(studio.Accept)
        fail = await conn.expect(studio.Fail)
        assert fail.job_id == "job-409" and fail.retryable is True
        assert "complete failed: 409 Conflict" in fail.error
        assert peer.upload_attempts == 1  # 4xx is final
        peer.upload_statuses[:] = [500, 503]
        await conn.send(offer("job-5xx", image_task()))
        await conn.expect(studio.Accept)
        with anyio.fail_after(15):
            while not peer.uploads:
                frame = await conn.recv()
                assert not isinstance(frame, studio.Fail), frame
        assert peer.upload_attempts == 4  # 409, then 500, 503, 200


async def test_missing_engine_is_accepted_then_failed_not_retryable(tmp_path):
    sd = ModelSource("sd-cpp", [], ModelCliDefaults(1.0, 8, 512, 512))
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-sd", image_task(), model="z-image-turbo", source=sd))
        await conn.expect(studio.Accept)
        fail = await conn.expect(studio.Fail)
        assert fail.retryable is False
        assert fail.error.startswith(
            "no `sdcpp` engine compiled into this worker (model `z-image-turbo` requires it)"
        )
        assert "pip install 'studio-worker[sdcpp]'" in fail.error
        # Nothing was sent to synthetic: no upload happened.
        assert peer.uploads == []


async def test_busy_and_paused_rejects(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, faults="slow-job=1.0") as run,
    ):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-slow", image_task(), model="synthetic-slow"))
        await conn.expect(studio.Accept)
        hb = await conn.expect(studio.Heartbeat)
        assert hb.current_job_id == "job-slow"
        await conn.send(offer("job-2", image_task()))
        reject = await conn.expect(studio.Reject)
        assert (reject.job_id, reject.code) == ("job-2", "busy")
        reply = await anyio.to_thread.run_sync(ask, socket_path(run.config_path), "pause")
        assert reply.ok and "paused" in reply.message
        hb = await conn.expect(studio.Heartbeat)
        assert hb.capabilities.auto_enabled is False
        await conn.send(offer("job-3", image_task()))
        reject = await conn.expect(studio.Reject)
        assert (reject.job_id, reject.code, reject.reason) == (
            "job-3",
            "paused",
            "worker paused by operator",
        )
        await anyio.to_thread.run_sync(ask, socket_path(run.config_path), "resume")
        with anyio.fail_after(5):
            while not (await conn.expect(studio.Heartbeat)).capabilities.auto_enabled:
                pass
        assert run.sup.lanes[0].state.job_outcomes["rejected_busy"] == 1
        assert run.sup.lanes[0].state.job_outcomes["rejected_paused"] == 1


async def test_engine_crash_mid_job_fails_retryable_then_poison(tmp_path):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-crash", image_task(), model="synthetic-crash"))
        await conn.expect(studio.Accept)
        fail = await conn.expect(studio.Fail)
        assert fail.retryable is True
        assert "died (exit code 3)" in fail.error and "job-crash" in fail.error
        # The fresh host passes its probe (ready again): the loss was the job's, a strike.
        slot = run.sup.pool.slots[0]
        assert await slot.wait_ready(10)
        assert run.sup.pool.poison.strikes_of("job-crash") == 1
        # Crashing the next host is its second strike, once the host after it proves itself;
        # the fail goes out at the loss, still retryable.
        await conn.send(offer("job-crash", image_task(), model="synthetic-crash"))
        await conn.expect(studio.Accept)
        assert (await conn.expect(studio.Fail)).retryable is True
        assert await slot.wait_ready(10)
        assert run.sup.pool.poison.is_poison("job-crash")
        # A third offer of the poison job is refused without touching a host.
        restarts = slot.restarts
        await conn.send(offer("job-crash", image_task(), model="synthetic-crash"))
        await conn.expect(studio.Accept)
        fail = await conn.expect(studio.Fail)
        assert fail.retryable is False
        assert "has already taken down an engine host twice" in fail.error
        assert slot.restarts == restarts


async def test_read_idle_timeout_reconnects(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    timings = __import__("tests.support.supervisor_harness", fromlist=["FAST"]).FAST
    from dataclasses import replace

    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, timings=replace(timings, read_idle_s=0.6)),
    ):
        conn, _ = await welcomed(peer)
        # The studio goes silent (no heartbeat acks): the worker declares it dead.
        second = await peer.next_connection(timeout_s=15)
        await second.handshake()
        assert any("no frames from server for 0.6s" in r.getMessage() for r in caplog.records)
        assert any(
            r.getMessage().startswith("disconnected; reconnect attempt 1 in")
            for r in caplog.records
        )
        del conn


@pytest.mark.parametrize("code", [4002, 4003, 4004, 1000])
async def test_close_codes_other_than_4001_reconnect(tmp_path, code):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        await conn.close(code, "bye")
        again = await peer.next_connection()
        await again.handshake()
        assert run.sup.lanes[0].state.reconnects == 1


async def test_close_4001_stops_for_good(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        await conn.close(4001, "token revoked")
        assert await run.wait_exit() == 3
        assert any(
            "auth failed: server closed 4001: token revoked. Re-register the worker."
            in r.getMessage()
            for r in caplog.records
        )


async def test_upgrade_401_stops_and_other_status_reconnects(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    peer = StudioPeer(upgrade_status=503, upgrade_body=b"maintenance ref=abc")
    async with running_peer(peer), running_supervisor(tmp_path, peer.base_url) as run:
        with anyio.fail_after(10):
            while run.sup.lanes[0].state.reconnects < 2:
                await anyio.sleep(0.05)
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            "session error: HTTP 503 on websocket upgrade: maintenance ref=abc; reconnect attempt 2"
            in m
            for m in messages
        ), messages
        peer.upgrade_status = 401
        assert await run.wait_exit() == 3
        assert any(
            "auth failed: 401 on websocket upgrade" in m
            for m in messages + [r.getMessage() for r in caplog.records]
        )


@pytest.mark.parametrize(
    ("code", "exit_code"), [("auth_failed", 3), ("protocol_violation", 4), ("internal_error", 4)]
)
async def test_error_frames_end_the_session(tmp_path, code, exit_code):
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        await conn.send(studio.Error(code=code, message="nope"))
        assert await run.wait_exit() == exit_code


async def test_reconnect_counter_resets_after_a_welcomed_session(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url):
        conn, _ = await welcomed(peer)
        await conn.close(1000, "")
        conn = await peer.next_connection()  # not welcomed: the next failure counts on
        await conn.expect(studio.Hello)
        await conn.close(1000, "")
        conn, _ = await welcomed(peer)
        await conn.close(1000, "")
        conn, _ = await welcomed(peer)
        attempts = [
            r.getMessage().split("reconnect attempt ")[1].split(" ")[0]
            for r in caplog.records
            if "reconnect attempt" in r.getMessage()
        ]
        assert attempts == ["1", "2", "1"]


async def test_graceful_stop_finishes_the_job_and_closes_1000(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, faults="slow-job=0.8") as run,
    ):
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-slow", llm_task(), model="synthetic-slow"))
        await conn.expect(studio.Accept)
        run.sup.stop.set()
        await conn.send(offer("job-late", llm_task()))
        reject = await conn.expect(studio.Reject)
        assert (reject.job_id, reject.code) == ("job-late", "paused")
        assert (await conn.expect(studio.CompleteJson)).job_id == "job-slow"
        code = await conn.wait_closed()
        assert code == 1000
        assert await run.wait_exit() == 0
        assert all(s.state.value == "stopped" for s in run.sup.pool.slots)


async def test_secrets_never_reach_a_log(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        await conn.send(offer("job-img", image_task()))
        await conn.expect(studio.Accept)
        with anyio.fail_after(10):
            while not peer.uploads:
                await conn.recv()
        await conn.close(4001, "revoked")
        await run.wait_exit()
    shipped = [
        e.message for f in conn.received if isinstance(f, studio.LogBatch) for e in f.entries
    ]
    assert shipped
    for text in [r.getMessage() for r in caplog.records] + shipped:
        assert TOKEN not in text


async def test_credentials_removed_while_running_end_the_loop_fatally(tmp_path, caplog):
    from supervisor.cli.commands import register

    caplog.set_level(logging.INFO)
    async with running_peer() as peer, running_supervisor(tmp_path, peer.base_url) as run:
        conn, _ = await welcomed(peer)
        register(run.config_path, reset=True)
        await conn.close(1000, "")
        assert await run.wait_exit() == 4
        assert any(
            "fatal: worker_id or auth_token missing; run register" in r.getMessage()
            for r in caplog.records
        )
