"""The local studio's frame limit: a worker frame of up to ``DEFAULT_MAX_FRAME_BYTES`` (the
default the worker checks its own frames against) is taken; one byte more closes the
connection with 1009, as any WebSocket server in front of a studio does, and the claim goes
back to the queue. A real ``websockets`` client plays the worker."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from protocol.studio import CLOSE_MESSAGE_TOO_BIG, DEFAULT_MAX_FRAME_BYTES
from supervisor.config import WorkerConfig
from tests.localstudio.test_localstudio import LLM_TASK, MODEL_SOURCE, online, register
from tests.localstudio.test_localstudio import running_studio as running_local_studio

pytestmark = pytest.mark.anyio


def complete_json(job_id: str, frame_bytes: int) -> str:
    """A ``completeJson`` frame of exactly ``frame_bytes`` bytes (its prompt pads it)."""
    frame: dict[str, Any] = {"type": "completeJson", "jobId": job_id, "result": {}, "prompt": ""}
    bare = len(json.dumps(frame, separators=(",", ":")))
    frame["prompt"] = "p" * (frame_bytes - bare)
    text = json.dumps(frame, separators=(",", ":"))
    assert len(text.encode()) == frame_bytes
    return text


def test_the_worker_default_is_the_local_studio_limit() -> None:
    assert WorkerConfig().max_frame_bytes == DEFAULT_MAX_FRAME_BYTES == 16 * 2**20


async def test_a_frame_at_the_limit_is_taken(tmp_path: Path) -> None:
    async with running_local_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job = await studio.api.submit_job("synthetic-llm", LLM_TASK, MODEL_SOURCE)
            await worker.expect_offer()
            await worker.send({"type": "accept", "jobId": job.id})
            await worker.ws.send(complete_json(job.id, DEFAULT_MAX_FRAME_BYTES))
            assert await worker.recv() == {"type": "completeAck", "jobId": job.id}
        assert (await studio.wait(job.id)).status == "done"


async def test_a_frame_over_the_limit_closes_the_connection_with_1009(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "localstudio")
    async with running_local_studio(tmp_path) as studio:
        reg = await register(studio)
        async with online(studio, reg) as worker:
            job = await studio.api.submit_job("synthetic-llm", LLM_TASK, MODEL_SOURCE)
            await worker.expect_offer()
            await worker.send({"type": "accept", "jobId": job.id})
            await worker.heartbeat(current_job_id=job.id)
            await worker.expect("heartbeatAck")  # the accept has been applied
            await worker.ws.send(complete_json(job.id, DEFAULT_MAX_FRAME_BYTES + 1))
            code, _ = await worker.expect_close()
            assert code == CLOSE_MESSAGE_TOO_BIG
        released = await studio.wait(job.id, "queued")
        assert released.attempts == 1 and released.claimed_by is None
    assert any(
        "sent a frame over the 16777216-byte limit" in r.getMessage() for r in caplog.records
    )
