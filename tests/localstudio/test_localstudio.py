"""The local studio end to end: a real uvicorn server on 127.0.0.1 port 0, a raw
``websockets`` client acting as the worker, httpx for the HTTP surfaces.

Nothing sleeps to wait: frames are awaited under ``anyio.fail_after`` and job state
changes through the ``/local/jobs/{id}/wait`` long poll. "No offer arrived" is proven by
ordering: a frame sent after the event under test is answered before any offer could be.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from localstudio import LocalStudio
from localstudio.api_types import JobStatusName, JobView
from localstudio.client import AsyncLocalStudioClient, LocalStudioClient
from localstudio.errors import (
    JobWaitTimeoutError,
    StudioApiError,
    StudioConfigError,
    StudioStartupError,
)
from protocol.studio import Offer, decode_outbound

pytestmark = pytest.mark.anyio

FRAME_TIMEOUT_S = 5.0
SUBPROTOCOL = "studio-worker-v1"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

MODEL_SOURCE: dict[str, Any] = {
    "engine": "synthetic",
    "files": [],
    "cliDefaults": {"cfgScale": 1.0, "steps": 1, "width": 64, "height": 64},
}
IMAGE_TASK: dict[str, Any] = {
    "kind": "image",
    "prompt": "an aurora fox",
    "width": 64,
    "height": 64,
    "ext": "png",
}
LLM_TASK: dict[str, Any] = {"kind": "llm", "messages": [{"role": "user", "content": "hi"}]}


def capabilities(**overrides: Any) -> dict[str, Any]:
    caps: dict[str, Any] = {
        "machineName": "rig-01",
        "username": "op",
        "agentVersion": "0.5.0",
        "engine": "multi",
        "vramTotalGb": 24.0,
        "vramThresholdGb": 12.0,
        "autoEnabled": True,
        "autoStart": False,
        "autoUpdate": True,
        "startMinimised": True,
        "onlyWhenIdle": False,
        "supportedModels": ["synthetic"],
        "taskKinds": ["image", "llm", "audio_stt", "audio_tts", "video"],
        "supportedModelsPerKind": {},
    }
    caps.update(overrides)
    return caps


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- fixtures as context managers (they clean up the server and the sockets) -------------


@dataclass
class Studio:
    url: str
    data_dir: Path
    http: httpx.AsyncClient
    api: AsyncLocalStudioClient

    @property
    def ws_base(self) -> str:
        return self.url.replace("http://", "ws://") + "/graphics/api/workers"

    async def submit(self, task: dict[str, Any] = IMAGE_TASK, **kwargs: Any) -> str:
        job = await self.api.submit_job("synthetic", task, MODEL_SOURCE, **kwargs)
        return job.id

    async def wait(self, job_id: str, *until: JobStatusName) -> JobView:
        statuses: tuple[JobStatusName, ...] = until or ("done", "failed")
        return await self.api.wait_for_job(job_id, until=statuses, timeout_s=FRAME_TIMEOUT_S)


@asynccontextmanager
async def running_studio(data_dir: Path, **settings: Any) -> AsyncIterator[Studio]:
    studio = LocalStudio(data_dir, **settings)
    async with anyio.create_task_group() as tg:
        url = await tg.start(studio.serve)
        async with (
            httpx.AsyncClient(base_url=url) as http,
            AsyncLocalStudioClient(url, admin_token=settings.get("admin_token")) as api,
        ):
            yield Studio(url, data_dir, http, api)
        tg.cancel_scope.cancel()


@dataclass
class Registered:
    worker_id: str
    token: str


async def register(studio: Studio) -> Registered:
    secret = secrets.token_hex(32)
    body = {
        "installId": secrets.token_hex(8),
        "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
        "capabilities": capabilities(),
        "userAgent": "studio-worker/0.5.0",
    }
    posted = await studio.http.post("/graphics/api/workers/register-request", json=body)
    request_id = posted.json()["requestId"]
    await studio.api.approve(request_id)
    polled = await studio.http.get(
        f"/graphics/api/workers/register-requests/{request_id}", headers=bearer(secret)
    )
    answer = polled.json()
    return Registered(answer["workerId"], answer["authToken"])


class Worker:
    """A raw WebSocket worker: JSON dicts in and out, every wait under a deadline."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        with anyio.fail_after(FRAME_TIMEOUT_S):
            frame: dict[str, Any] = json.loads(await self.ws.recv())
        return frame

    async def expect(self, frame_type: str) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == frame_type, frame
        return frame

    async def expect_close(self) -> tuple[int, str]:
        with anyio.fail_after(FRAME_TIMEOUT_S):
            try:
                unexpected = await self.ws.recv()
            except ConnectionClosed as closed:
                assert closed.rcvd is not None
                return closed.rcvd.code, closed.rcvd.reason
        raise AssertionError(f"expected a close, got {unexpected!r}")

    async def hello(self, token: str, **caps: Any) -> dict[str, Any]:
        await self.send({"type": "hello", "authToken": token, "capabilities": capabilities(**caps)})
        return await self.expect("welcome")

    async def heartbeat(self, current_job_id: str | None = None, **caps: Any) -> None:
        frame: dict[str, Any] = {"type": "heartbeat", "capabilities": capabilities(**caps)}
        if current_job_id is not None:
            frame["currentJobId"] = current_job_id
        await self.send(frame)

    async def expect_offer(self) -> dict[str, Any]:
        claim: dict[str, Any] = (await self.expect("offer"))["claim"]
        return claim


@asynccontextmanager
async def socket_for(studio: Studio, worker_id: str, token: str) -> AsyncIterator[Worker]:
    async with connect(
        f"{studio.ws_base}/{worker_id}/connect",
        additional_headers=bearer(token),
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        open_timeout=FRAME_TIMEOUT_S,
    ) as ws:
        yield Worker(ws)


@asynccontextmanager
async def online(studio: Studio, reg: Registered, **caps: Any) -> AsyncIterator[Worker]:
    """Connected, welcomed, and one heartbeat acknowledged (the studio's offer trigger)."""
    async with socket_for(studio, reg.worker_id, reg.token) as worker:
        await worker.hello(reg.token, **caps)
        await worker.heartbeat(**caps)
        await worker.expect("heartbeatAck")
        yield worker


# --- registration -------------------------------------------------------------------------


async def test_registration_approval_and_session_handshake(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        secret = secrets.token_hex(32)
        body = {
            "installId": "11111111-2222-3333-4444-555555555555",
            "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
            "capabilities": capabilities(),
            "userAgent": "studio-worker/0.5.0",
        }
        first = await studio.http.post("/graphics/api/workers/register-request", json=body)
        assert first.status_code == 200
        request_id = first.json()["requestId"]
        assert first.json() == {"requestId": request_id, "status": "pending"}
        again = await studio.http.post("/graphics/api/workers/register-request", json=body)
        assert again.json()["requestId"] == request_id  # dedup while pending

        poll_url = f"/graphics/api/workers/register-requests/{request_id}"
        assert (await studio.http.get(poll_url, headers=bearer(secret))).json() == {
            "status": "pending"
        }
        assert (await studio.http.get(poll_url, headers=bearer("wrong"))).status_code == 401
        assert (await studio.http.get(poll_url)).status_code == 401
        unknown = "/graphics/api/workers/register-requests/rr-nope"
        assert (await studio.http.get(unknown, headers=bearer(secret))).status_code == 404

        pending = await studio.api.pending()
        assert [p.request_id for p in pending] == [request_id]
        assert pending[0].capabilities.machine_name == "rig-01"
        decided = await studio.api.approve(request_id)
        assert decided.status == "approved" and decided.worker_id is not None
        assert await studio.api.pending() == []

        approved = (await studio.http.get(poll_url, headers=bearer(secret))).json()
        assert approved["status"] == "approved"
        assert approved["workerId"] == decided.worker_id
        rotated = (await studio.http.get(poll_url, headers=bearer(secret))).json()
        assert rotated["authToken"] != approved["authToken"]  # each poll mints a fresh token

        with pytest.raises(InvalidStatus) as refused:
            async with socket_for(studio, decided.worker_id, approved["authToken"]):
                pass
        assert refused.value.response.status_code == 401  # the rotated-out token is dead

        async with socket_for(studio, decided.worker_id, rotated["authToken"]) as worker:
            assert worker.ws.subprotocol == SUBPROTOCOL
            welcome = await worker.hello(rotated["authToken"])
            assert welcome["workerId"] == decided.worker_id
            assert RFC3339_MS.match(welcome["serverTime"])
            await worker.heartbeat()
            assert await worker.recv() == {"type": "heartbeatAck"}
            workers = await studio.api.workers()
            assert [(w.worker_id, w.connected) for w in workers] == [(decided.worker_id, True)]
            assert workers[0].last_heartbeat_at is not None


async def test_rejected_registration_reports_the_reason(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        secret = "s" * 64
        body = {
            "installId": "install-2",
            "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
            "capabilities": capabilities(),
            "userAgent": "studio-worker/0.5.0",
        }
        posted = await studio.http.post("/graphics/api/workers/register-request", json=body)
        request_id = posted.json()["requestId"]
        decided = await studio.api.reject(request_id, "unknown contributor")
        assert (decided.status, decided.reason) == ("rejected", "unknown contributor")
        with pytest.raises(StudioApiError) as conflict:
            await studio.api.approve(request_id)
        assert conflict.value.status == 409
        polled = await studio.http.get(
            f"/graphics/api/workers/register-requests/{request_id}", headers=bearer(secret)
        )
        assert polled.json() == {"status": "rejected", "reason": "unknown contributor"}
        bad = dict(body, registrationSecretHash="NOT-HEX")
        assert (
            await studio.http.post("/graphics/api/workers/register-request", json=bad)
        ).status_code == 400


async def test_auto_approve_answers_the_first_poll_with_a_token(tmp_path: Path) -> None:
    async with running_studio(tmp_path, auto_approve=True) as studio:
        secret = "t" * 64
        body = {
            "installId": "install-3",
            "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
            "capabilities": capabilities(),
            "userAgent": "studio-worker/0.5.0",
        }
        posted = await studio.http.post("/graphics/api/workers/register-request", json=body)
        assert posted.json()["status"] == "pending"
        polled = await studio.http.get(
            f"/graphics/api/workers/register-requests/{posted.json()['requestId']}",
            headers=bearer(secret),
        )
        answer = polled.json()
        assert answer["status"] == "approved" and answer["authToken"]
        async with socket_for(studio, answer["workerId"], answer["authToken"]) as worker:
            await worker.hello(answer["authToken"])


# --- session auth and protocol violations -------------------------------------------------


async def test_wrong_token_is_refused_at_the_upgrade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        for worker_id, token in [(reg.worker_id, "wrong"), ("w-unknown", reg.token)]:
            with pytest.raises(InvalidStatus) as refused:
                async with socket_for(studio, worker_id, token):
                    pass
            assert refused.value.response.status_code == 401
            assert json.loads(refused.value.response.body or b"{}")["error"]
    # uvicorn's false "returned without completing handshake" alarm is filtered out.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_bad_hello_token_gets_auth_failed_and_4001(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with socket_for(studio, reg.worker_id, reg.token) as worker:
            await worker.send(
                {"type": "hello", "authToken": "not-it", "capabilities": capabilities()}
            )
            error = await worker.expect("error")
            assert error["code"] == "auth_failed"
            assert (await worker.expect_close())[0] == 4001


async def test_frame_before_hello_is_a_protocol_violation(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with socket_for(studio, reg.worker_id, reg.token) as worker:
            await worker.heartbeat()
            assert await worker.recv() == {
                "type": "error",
                "code": "protocol_violation",
                "message": "session not authenticated",
            }
            assert (await worker.expect_close())[0] == 4002


async def test_garbage_and_unknown_job_ids_close_4002(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            await worker.send({"type": "accept", "jobId": "job-nobody-offered"})
            error = await worker.expect("error")
            assert error["code"] == "protocol_violation"
            assert "job-nobody-offered" in error["message"]
            assert (await worker.expect_close())[0] == 4002
        async with online(studio, reg) as worker:
            await worker.send({"type": "totallyMadeUp"})
            error = await worker.expect("error")
            assert "totallyMadeUp" in error["message"]
            assert (await worker.expect_close())[0] == 4002


async def test_second_connection_closes_the_first_with_4003(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as first:
            running = await studio.submit(LLM_TASK)
            await first.expect_offer()
            await first.send({"type": "accept", "jobId": running})
            await first.heartbeat()
            await first.expect("heartbeatAck")
            async with online(studio, reg) as second:
                error = await first.expect("error")
                assert error["code"] == "duplicate_worker"
                assert (await first.expect_close())[0] == 4003
                # Same worker, same token: the newer session inherits the accepted job.
                await second.send({"type": "completeJson", "jobId": running, "result": [1]})
                await second.expect("completeAck")
        done = await studio.wait(running)
        assert (done.status, done.result, done.attempts) == ("done", [1], 0)


async def test_long_violation_messages_fit_in_the_close_reason(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            long_id = "job-" + "é" * 200
            await worker.send({"type": "fail", "jobId": long_id, "error": "x", "retryable": True})
            error = await worker.expect("error")
            assert long_id in error["message"]  # the error frame carries it in full
            code, reason = await worker.expect_close()
            assert code == 4002 and len(reason.encode()) <= 123


# --- offers and results -------------------------------------------------------------------


async def test_offer_carries_the_claim_and_completejson_finishes_the_job(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job = await studio.api.submit_job(
                "synthetic-llm",
                LLM_TASK,
                MODEL_SOURCE,
                vram_gb_estimate=4.0,
                game_id="game-of-elements",
                asset_name="game-of-elements/lore/intro",
            )
            claim = await worker.expect_offer()
            assert claim == {
                "jobId": job.id,
                "gameId": "game-of-elements",
                "assetName": "game-of-elements/lore/intro",
                "model": "synthetic-llm",
                "vramGbEstimate": 4.0,
                "task": LLM_TASK,
                "modelSource": MODEL_SOURCE,
            }
            offer = decode_outbound(json.dumps({"type": "offer", "claim": claim}))
            assert isinstance(offer, Offer) and offer.claim.model_source.engine == "synthetic"
            claimed = await studio.api.get_job(job.id)
            assert (claimed.status, claimed.claimed_by) == ("claimed", reg.worker_id)

            await worker.send({"type": "accept", "jobId": job.id})
            result = {"role": "assistant", "content": "hello"}
            await worker.send(
                {"type": "completeJson", "jobId": job.id, "result": result, "prompt": "hi"}
            )
            assert await worker.recv() == {"type": "completeAck", "jobId": job.id}
            done = await studio.wait(job.id)
            assert (done.status, done.result, done.prompt) == ("done", result, "hi")
            assert done.attempts == 0 and done.finished_at is not None


async def test_multipart_upload_stores_the_asset(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg, other = await register(studio), await register(studio)
        async with online(studio, reg) as worker:
            queued_elsewhere = await studio.submit(IMAGE_TASK, vram_gb_estimate=99.0)
            job_id = await studio.submit()
            assert (await worker.expect_offer())["jobId"] == job_id
            await worker.send({"type": "accept", "jobId": job_id})

            def upload(worker_id: str, token: str, target: str) -> Any:
                return studio.http.post(
                    f"/graphics/api/workers/{worker_id}/jobs/{target}/complete",
                    headers=bearer(token),
                    data={"prompt": "an aurora fox", "ext": "png"},
                    files={"image": (f"{target}.png", b"\x89PNG-bytes", "image/png")},
                )

            assert (await upload(other.worker_id, other.token, job_id)).status_code == 409
            assert (await upload(reg.worker_id, reg.token, queued_elsewhere)).status_code == 409
            assert (await upload(reg.worker_id, "bad-token", job_id)).status_code == 401
            ok = await upload(reg.worker_id, reg.token, job_id)
            assert ok.status_code == 200, ok.text
            done = await studio.wait(job_id)
            assert (done.status, done.prompt) == ("done", "an aurora fox")
            assert done.asset_path == f"assets/{job_id}.png"
            assert (tmp_path / done.asset_path).read_bytes() == b"\x89PNG-bytes"
            asset = await studio.http.get(f"/local/jobs/{job_id}/asset")
            assert asset.content == b"\x89PNG-bytes"
            assert asset.headers["content-type"] == "image/png"
            assert (await upload(reg.worker_id, reg.token, job_id)).status_code == 409


async def test_busy_reject_requeues_without_an_attempt_or_a_spin(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job_id = await studio.submit()
            await worker.expect_offer()
            await worker.send(
                {
                    "type": "reject",
                    "jobId": job_id,
                    "reason": "worker already has an in-flight job",
                    "code": "busy",
                }
            )
            # An immediate re-offer would arrive before the ack of this heartbeat.
            await worker.heartbeat()
            await worker.expect("heartbeatAck")
            again = await worker.expect_offer()  # offered again on the heartbeat
            assert again["jobId"] == job_id
            job = await studio.api.get_job(job_id)
            assert (job.status, job.attempts) == ("claimed", 0)
            await worker.send({"type": "reject", "jobId": job_id, "reason": "worker paused"})
            requeued = await studio.wait(job_id, "queued")
            assert requeued.attempts == 0


async def test_transient_reject_moves_the_job_to_another_worker(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        first, second = await register(studio), await register(studio)
        async with online(studio, first) as early, online(studio, second) as late:
            job_id = await studio.submit()
            await early.expect_offer()
            await early.send(
                {"type": "reject", "jobId": job_id, "reason": "paused", "code": "paused"}
            )
            assert (await late.expect_offer())["jobId"] == job_id


async def test_non_transient_reject_is_not_offered_back(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            refused = await studio.submit()
            await worker.expect_offer()
            await worker.send({"type": "reject", "jobId": refused, "reason": "model unloaded"})
            await worker.heartbeat()
            await worker.expect("heartbeatAck")  # no re-offer of the refused job
            other = await studio.submit()
            assert (await worker.expect_offer())["jobId"] == other
            job = await studio.api.get_job(refused)
            assert job.status == "queued" and job.error is not None
            assert "model unloaded" in job.error


async def test_retryable_failures_count_attempts_until_failed(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job_id = await studio.submit(max_attempts=2)
            for attempt in (1, 2):
                assert (await worker.expect_offer())["jobId"] == job_id
                await worker.send({"type": "accept", "jobId": job_id})
                await worker.send(
                    {"type": "fail", "jobId": job_id, "error": "oom", "retryable": True}
                )
                assert await worker.recv() == {"type": "failAck", "jobId": job_id}
                if attempt == 1:
                    assert (await studio.api.get_job(job_id)).attempts == 1
            failed = await studio.wait(job_id)
            assert (failed.status, failed.attempts, failed.error) == ("failed", 2, "oom")


async def test_non_retryable_failure_is_final(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job_id = await studio.submit()
            await worker.expect_offer()
            await worker.send({"type": "accept", "jobId": job_id})
            error = "no engine for sd-cpp on this worker"
            await worker.send({"type": "fail", "jobId": job_id, "error": error, "retryable": False})
            await worker.expect("failAck")
            failed = await studio.wait(job_id)
            assert (failed.status, failed.attempts, failed.error) == ("failed", 1, error)


# --- losing a worker ----------------------------------------------------------------------


async def test_disconnect_releases_claims(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg, maxConcurrentJobs=2) as worker:
            running = await studio.submit()
            offered_only = await studio.submit()
            assert (await worker.expect_offer())["jobId"] == running
            assert (await worker.expect_offer())["jobId"] == offered_only
            await worker.send({"type": "accept", "jobId": running})
            await worker.heartbeat(current_job_id=running, maxConcurrentJobs=2)
            await worker.expect("heartbeatAck")  # the accept has been applied
        lost = await studio.wait(running, "queued")
        assert lost.attempts == 1 and lost.claimed_by is None
        unanswered = await studio.wait(offered_only, "queued")
        assert unanswered.attempts == 0


async def test_heartbeat_silence_closes_the_session_and_releases(tmp_path: Path) -> None:
    async with running_studio(tmp_path, heartbeat_timeout_s=0.5) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job_id = await studio.submit()
            await worker.expect_offer()
            await worker.send({"type": "accept", "jobId": job_id})
            code, reason = await worker.expect_close()
            assert (code, reason) == (1000, "heartbeat timeout")
        released = await studio.wait(job_id, "queued")
        assert released.attempts == 1


async def test_restart_keeps_the_queue_and_requeues_orphaned_claims(tmp_path: Path) -> None:
    async with AsyncExitStack() as sockets:
        async with running_studio(tmp_path) as studio:
            reg = await register(studio)
            worker = await sockets.enter_async_context(online(studio, reg))
            done_id = await studio.submit(LLM_TASK)
            await worker.expect_offer()
            await worker.send({"type": "completeJson", "jobId": done_id, "result": {"x": 1}})
            await worker.expect("completeAck")
            claimed_id = await studio.submit()
            await worker.expect_offer()
            await worker.send({"type": "accept", "jobId": claimed_id})
            await worker.heartbeat()
            await worker.expect("heartbeatAck")
            queued_id = await studio.submit(vram_gb_estimate=64.0)
        # The studio stopped under a connected worker: uvicorn closes it "service restart".
        assert (await worker.expect_close())[0] == 1012
    async with running_studio(tmp_path) as studio:
        done = await studio.api.get_job(done_id)
        assert (done.status, done.result) == ("done", {"x": 1})
        orphan = await studio.api.get_job(claimed_id)
        assert (orphan.status, orphan.attempts, orphan.claimed_by) == ("queued", 0, None)
        assert (await studio.api.get_job(queued_id)).status == "queued"
        async with online(studio, reg) as worker:  # the registration survived too
            assert (await worker.expect_offer())["jobId"] == claimed_id


# --- selection ----------------------------------------------------------------------------


async def test_vram_threshold_and_task_kinds_filter_offers(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg, vramThresholdGb=8.0, taskKinds=["llm"]) as worker:
            too_big = await studio.submit(LLM_TASK, vram_gb_estimate=9.0)
            wrong_kind = await studio.submit(IMAGE_TASK, vram_gb_estimate=1.0)
            fits = await studio.submit(LLM_TASK, vram_gb_estimate=8.0)
            assert (await worker.expect_offer())["jobId"] == fits
            assert {
                (await studio.api.get_job(too_big)).status,
                (await studio.api.get_job(wrong_kind)).status,
            } == {"queued"}


async def test_earliest_connected_worker_wins(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        first, second = await register(studio), await register(studio)
        async with online(studio, first) as early, online(studio, second) as late:
            job_a = await studio.submit()
            assert (await early.expect_offer())["jobId"] == job_a
            job_b = await studio.submit()  # the early worker is full (capacity 1)
            assert (await late.expect_offer())["jobId"] == job_b


async def test_paused_worker_gets_nothing_until_resumed(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg, autoEnabled=False) as worker:
            job_id = await studio.submit()
            await worker.heartbeat(autoEnabled=False)
            await worker.expect("heartbeatAck")
            await worker.heartbeat(autoEnabled=True)
            await worker.expect("heartbeatAck")
            assert (await worker.expect_offer())["jobId"] == job_id


# --- logs, local API guard, sync client ---------------------------------------------------


async def test_log_batches_are_stored(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            entry = {
                "ts": "2026-05-25T12:00:00.000Z",
                "level": "info",
                "category": "engine",
                "message": "starting dispatch",
                "jobId": "job-1",
            }
            await worker.send({"type": "logBatch", "entries": [entry]})
            await worker.heartbeat()
            await worker.expect("heartbeatAck")  # frames are applied in order
        logs = await studio.api.logs(worker_id=reg.worker_id)
        assert [(x.message, x.job_id, x.category) for x in logs] == [
            ("starting dispatch", "job-1", "engine")
        ]


async def test_admin_token_guards_the_local_api(tmp_path: Path) -> None:
    async with running_studio(tmp_path, admin_token="adm1n") as studio:
        assert (await studio.http.get("/local/jobs")).status_code == 401
        wrong = await studio.http.get("/local/jobs", headers=bearer("nope"))
        assert wrong.status_code == 401
        assert await studio.api.list_jobs() == []  # the client sends the token
        with pytest.raises(StudioApiError) as bad:
            await studio.api.submit_job("m", {"kind": "nope"}, MODEL_SOURCE)
        assert bad.value.status == 400


async def test_non_loopback_bind_needs_an_admin_token(tmp_path: Path) -> None:
    with pytest.raises(StudioConfigError, match="admin token"):
        await LocalStudio(tmp_path).serve("0.0.0.0", 0)


async def test_taken_port_is_a_startup_error(tmp_path: Path) -> None:
    async with running_studio(tmp_path / "a") as studio:
        port = int(studio.url.rsplit(":", 1)[1])
        with pytest.raises(StudioStartupError, match=f"127.0.0.1:{port}"):
            await LocalStudio(tmp_path / "b").serve("127.0.0.1", port)


async def test_wait_for_job_times_out_with_the_current_status(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        job_id = await studio.submit()
        with pytest.raises(JobWaitTimeoutError, match="still queued"):
            await studio.api.wait_for_job(job_id, timeout_s=0.2)
        with pytest.raises(StudioApiError) as missing:
            await studio.api.get_job("job-missing")
        assert missing.value.status == 404


async def test_sync_client_submits_and_waits(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)

        def submit_and_wait() -> tuple[str, str]:
            with LocalStudioClient(studio.url) as client:
                job = client.submit_job("synthetic-llm", LLM_TASK, MODEL_SOURCE)
                finished = client.wait_for_job(job.id, timeout_s=FRAME_TIMEOUT_S)
                return job.id, finished.status

        async with online(studio, reg) as worker, anyio.create_task_group() as tg:
            outcome: list[tuple[str, str]] = []

            async def run_client() -> None:
                outcome.append(await anyio.to_thread.run_sync(submit_and_wait))

            tg.start_soon(run_client)
            job_id = (await worker.expect_offer())["jobId"]
            await worker.send({"type": "completeJson", "jobId": job_id, "result": {"ok": 1}})
            await worker.expect("completeAck")
        assert outcome == [(job_id, "done")]
