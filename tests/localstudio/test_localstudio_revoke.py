"""Revoking a worker on a real local studio: its live session is closed ``auth_failed``/4001,
its token is dead everywhere, and the jobs it held go back to the queue."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from localstudio.client import LocalStudioClient
from localstudio.errors import StudioApiError
from tests.localstudio.test_localstudio import (
    LLM_TASK,
    bearer,
    capabilities,
    online,
    register,
    running_studio,
    socket_for,
)

pytestmark = pytest.mark.anyio

REVOKED = "token revoked by the studio operator"
TWO: dict[str, Any] = {"maxConcurrentJobs": 2}


async def test_revoke_closes_the_session_4001_and_requeues_its_jobs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="localstudio")
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg, **TWO) as worker:
            running = await studio.submit(LLM_TASK)
            assert (await worker.expect_offer())["jobId"] == running
            await worker.send({"type": "accept", "jobId": running})
            offered = await studio.submit(LLM_TASK)
            assert (await worker.expect_offer())["jobId"] == offered  # never answered
            await worker.heartbeat(**TWO)
            await worker.expect("heartbeatAck")  # the accept was applied before this

            view = await studio.api.revoke_worker(reg.worker_id)
            assert (view.worker_id, view.connected, view.in_flight) == (reg.worker_id, False, [])

            error = {"type": "error", "code": "auth_failed", "message": REVOKED}
            assert await worker.recv() == error
            assert await worker.expect_close() == (4001, REVOKED)

        # Released as when a session ends: the accepted job counts an attempt, the
        # unanswered offer is back as it was.
        accepted = await studio.api.get_job(running)
        assert (accepted.status, accepted.claimed_by, accepted.attempts) == ("queued", None, 1)
        assert accepted.error == "worker session ended while running the job"
        unanswered = await studio.api.get_job(offered)
        assert (unanswered.status, unanswered.claimed_by, unanswered.attempts) == (
            "queued",
            None,
            0,
        )

        other = await register(studio)
        async with online(studio, other, **TWO) as second:
            again = {(await second.expect_offer())["jobId"] for _ in range(2)}
        assert again == {running, offered}
    revoked_lines = [r for r in caplog.records if "revoked by the operator" in r.getMessage()]
    assert len(revoked_lines) == 1, revoked_lines
    assert reg.worker_id in revoked_lines[0].getMessage()


async def test_a_revoked_token_opens_nothing(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        job_id = await studio.submit(LLM_TASK)
        async with socket_for(studio, reg.worker_id, reg.token) as early:
            # Upgraded with the token before the revoke, hello not sent yet: whichever of
            # the revoke and the hello the studio sees first, this socket never gets a session.
            def revoke() -> str:
                with LocalStudioClient(studio.url) as client:  # the blocking client
                    return client.revoke_worker(reg.worker_id).worker_id

            assert await anyio.to_thread.run_sync(revoke) == reg.worker_id
            hello = {"type": "hello", "authToken": reg.token, "capabilities": capabilities()}
            with contextlib.suppress(ConnectionClosed):  # closed already by the revoke
                await early.send(hello)
            error = await early.recv()
            assert (error["type"], error["code"]) == ("error", "auth_failed"), error
            assert (await early.expect_close())[0] == 4001

        with pytest.raises(InvalidStatus) as refused:
            async with socket_for(studio, reg.worker_id, reg.token):
                pass
        assert refused.value.response.status_code == 401

        upload = await studio.http.post(
            f"/graphics/api/workers/{reg.worker_id}/jobs/{job_id}/complete",
            headers=bearer(reg.token),
            data={"ext": "png"},
            files={"image": ("a.png", b"png")},
        )
        assert upload.status_code == 401

        workers = await studio.api.workers()
        assert [(w.worker_id, w.connected) for w in workers] == [(reg.worker_id, False)]
        assert (await studio.api.revoke_worker(reg.worker_id)).worker_id == reg.worker_id
        assert (await studio.api.get_job(job_id)).status == "queued"


async def test_revoking_an_unknown_worker_is_404(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        reg = await register(studio)
        raw = await studio.http.post("/local/workers/w-nope/revoke")
        assert (raw.status_code, raw.json()) == (404, {"error": "unknown worker w-nope"})
        with pytest.raises(StudioApiError) as unknown:
            await studio.api.revoke_worker("w-nope")
        assert (unknown.value.status, unknown.value.message) == (404, "unknown worker w-nope")
        # The known worker is untouched: its token still opens a session.
        async with online(studio, reg):
            pass
