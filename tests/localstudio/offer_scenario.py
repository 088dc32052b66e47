"""The offer-rule scenario shared by the local studio's tests and the CLI's: a raw WebSocket
worker advertising ``maxConcurrentJobs: 2`` against a studio running in this process or
in another one.

"No offer arrived" is proven by ordering: two heartbeats are answered in order, and an
offer made on the first would sit between the two acks. Every wait is under the frame
deadline of ``Worker``. Imports nothing from ``supervisor/``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from localstudio.client import AsyncLocalStudioClient
from tests.localstudio.test_localstudio import (
    LLM_TASK,
    Registered,
    Studio,
    Worker,
    bearer,
    capabilities,
    socket_for,
)

TWO: dict[str, Any] = {"maxConcurrentJobs": 2}
# Above the threshold a ``start --local`` test gives the supervisor's own worker, so only
# the raw worker can take these jobs.
JOB_VRAM_GB = 1.0


async def register(studio: Studio, *, approve: bool = True) -> Registered:
    """Register a worker; ``approve=False`` for a studio that approves by itself."""
    secret = secrets.token_hex(32)
    body = {
        "installId": secrets.token_hex(8),
        "registrationSecretHash": hashlib.sha256(secret.encode()).hexdigest(),
        "capabilities": capabilities(**TWO),
        "userAgent": "studio-worker/0.5.0",
    }
    posted = await studio.http.post("/graphics/api/workers/register-request", json=body)
    request_id = posted.json()["requestId"]
    if approve:
        await studio.api.approve(request_id)
    polled = await studio.http.get(
        f"/graphics/api/workers/register-requests/{request_id}", headers=bearer(secret)
    )
    answer = polled.json()
    assert answer["status"] == "approved", answer
    return Registered(answer["workerId"], answer["authToken"])


@asynccontextmanager
async def online(studio: Studio, reg: Registered) -> AsyncIterator[Worker]:
    """Welcomed, advertising two concurrent jobs, one heartbeat acknowledged."""
    async with socket_for(studio, reg.worker_id, reg.token) as worker:
        await worker.hello(reg.token, **TWO)
        await worker.heartbeat(**TWO)
        await worker.expect("heartbeatAck")
        yield worker


@asynccontextmanager
async def studio_at(url: str, data_dir: Path) -> AsyncIterator[Studio]:
    """Clients for a studio running in another process."""
    async with httpx.AsyncClient(base_url=url) as http, AsyncLocalStudioClient(url) as api:
        yield Studio(url, data_dir, http, api)


async def submit_two(studio: Studio) -> tuple[str, str]:
    first = await studio.submit(LLM_TASK, vram_gb_estimate=JOB_VRAM_GB)
    second = await studio.submit(LLM_TASK, vram_gb_estimate=JOB_VRAM_GB)
    return first, second


async def no_offer_pending(worker: Worker) -> None:
    """Two heartbeats answered back to back: nothing was offered on the first."""
    await worker.heartbeat(**TWO)
    await worker.heartbeat(**TWO)
    await worker.expect("heartbeatAck")
    await worker.expect("heartbeatAck")


async def offers_one_at_a_time(studio: Studio, *, approve: bool = True) -> None:
    """Two queued jobs, a worker that could run two: the second offer follows the
    first job's completion, never before."""
    first, second = await submit_two(studio)
    reg = await register(studio, approve=approve)
    async with online(studio, reg) as worker:
        assert (await worker.expect_offer())["jobId"] == first
        await worker.send({"type": "accept", "jobId": first})
        await no_offer_pending(worker)
        assert (await studio.api.get_job(second)).status == "queued"
        await worker.send({"type": "completeJson", "jobId": first, "result": {"n": 1}})
        await worker.expect("completeAck")
        assert (await worker.expect_offer())["jobId"] == second
        await worker.send({"type": "completeJson", "jobId": second, "result": {"n": 2}})
        await worker.expect("completeAck")
