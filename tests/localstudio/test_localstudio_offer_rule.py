"""The two offer rules, on a real server: by default a worker that advertises
``maxConcurrentJobs: 2`` gets two offers at once; with one offer per worker (the cloud
studio's rule, flows.md §3) it gets the next only after its last one completed, failed or
was rejected. Also ``python -m localstudio --one-offer-per-worker`` as a real process (the
``supervisor`` commands that pass the flag on are tested in tests/supervisor/cli).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from localstudio.__main__ import READY_PREFIX
from localstudio.selection import OfferRule
from tests.localstudio.offer_scenario import (
    TWO,
    no_offer_pending,
    offers_one_at_a_time,
    online,
    register,
    studio_at,
    submit_two,
)
from tests.localstudio.test_localstudio import running_studio

pytestmark = pytest.mark.anyio

ONE_OFFER_PER_WORKER = OfferRule.ONE_PER_WORKER
PROCESS_START_S = 30.0


async def test_default_rule_offers_up_to_max_concurrent_jobs_at_once(tmp_path: Path) -> None:
    async with running_studio(tmp_path) as studio:
        first, second = await submit_two(studio)
        reg = await register(studio)
        async with online(studio, reg) as worker:
            assert (await worker.expect_offer())["jobId"] == first
            assert (await worker.expect_offer())["jobId"] == second  # no completion between
            for job_id in (first, second):
                await worker.send({"type": "completeJson", "jobId": job_id, "result": [1]})
                await worker.expect("completeAck")


async def test_one_offer_per_worker_waits_for_the_completion(tmp_path: Path) -> None:
    async with running_studio(tmp_path, offer_rule=ONE_OFFER_PER_WORKER) as studio:
        await offers_one_at_a_time(studio)


async def test_one_offer_per_worker_offers_the_next_after_a_failure(tmp_path: Path) -> None:
    async with running_studio(tmp_path, offer_rule=ONE_OFFER_PER_WORKER) as studio:
        first, second = await submit_two(studio)
        reg = await register(studio)
        async with online(studio, reg) as worker:
            assert (await worker.expect_offer())["jobId"] == first
            await worker.send({"type": "accept", "jobId": first})
            await no_offer_pending(worker)
            await worker.send(
                {"type": "fail", "jobId": first, "error": "cannot serve", "retryable": False}
            )
            await worker.expect("failAck")
            assert (await worker.expect_offer())["jobId"] == second


async def test_one_offer_per_worker_after_a_busy_reject(tmp_path: Path) -> None:
    """flows.md §6: a transient reject requeues the job with no attempt counted and no
    immediate re-offer; the worker, idle again, is offered the oldest queued job (the
    rejected one) on its next heartbeat, the studio's idle-heartbeat self-heal, and still
    only one at a time."""
    async with running_studio(tmp_path, offer_rule=ONE_OFFER_PER_WORKER) as studio:
        first, second = await submit_two(studio)
        reg = await register(studio)
        async with online(studio, reg) as worker:
            assert (await worker.expect_offer())["jobId"] == first
            reject = {"type": "reject", "jobId": first, "reason": "all slots busy", "code": "busy"}
            await worker.send(reject)
            await worker.heartbeat(**TWO)
            await worker.expect("heartbeatAck")  # nothing was offered on the reject
            assert (await worker.expect_offer())["jobId"] == first  # ... but on the heartbeat
            again = await studio.api.get_job(first)
            assert (again.attempts, again.claimed_by) == (0, reg.worker_id)
            await no_offer_pending(worker)
            assert (await studio.api.get_job(second)).status == "queued"


async def test_one_offer_per_worker_moves_a_rejected_job_to_an_idle_worker(
    tmp_path: Path,
) -> None:
    async with running_studio(tmp_path, offer_rule=ONE_OFFER_PER_WORKER) as studio:
        first, _ = await submit_two(studio)
        early_reg, late_reg = await register(studio), await register(studio)
        async with online(studio, early_reg) as early, online(studio, late_reg) as late:
            offered = [(await early.expect_offer())["jobId"], (await late.expect_offer())["jobId"]]
            assert offered[0] == first  # one each: the earliest connected got the oldest
            await early.send({"type": "reject", "jobId": first, "reason": "busy", "code": "busy"})
            await late.send({"type": "completeJson", "jobId": offered[1], "result": [1]})
            await late.expect("completeAck")
            assert (await late.expect_offer())["jobId"] == first  # idle again: it gets it


async def test_python_m_localstudio_one_offer_per_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / "studio-data"
    argv = [sys.executable, "-m", "localstudio", "--port", "0", "--data-dir", str(data_dir)]
    with (tmp_path / "studio.log").open("wb") as errlog:
        proc = await anyio.open_process(
            [*argv, "--one-offer-per-worker"], stdout=subprocess.PIPE, stderr=errlog
        )
    async with proc:
        try:
            assert proc.stdout is not None
            with anyio.fail_after(PROCESS_START_S):
                line = b""
                while not line.endswith(b"\n"):
                    line += await proc.stdout.receive(1)
            ready = line.decode().strip()
            assert ready.startswith(READY_PREFIX) and ready.endswith("; one offer per worker)")
            url = ready[len(READY_PREFIX) :].split(" ", 1)[0]
            async with studio_at(url, data_dir) as studio:
                await offers_one_at_a_time(studio)
        finally:
            if proc.returncode is None:
                proc.terminate()
        with anyio.fail_after(PROCESS_START_S):
            assert await proc.wait() == 0  # SIGTERM is a clean stop
