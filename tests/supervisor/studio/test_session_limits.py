"""What a studio session survives: a JSON result too large for one frame fails only its own
job, and the jobs a dropped session cuts short are each logged with their id. The real
supervisor (synthetic engine hosts as real subprocesses) against a scripted studio peer on
127.0.0.1."""

from __future__ import annotations

import logging

import pytest

from protocol import studio
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from tests.support.studio_peer import make_offer, running_peer
from tests.support.supervisor_harness import running_supervisor

pytestmark = pytest.mark.anyio

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
LIMIT_BYTES = 64 * 1024


def llm_offer(job_id: str, text: str, model: str = "synthetic") -> studio.Offer:
    task = LlmTask(messages=[ChatMessage("user", text)], max_tokens=4)
    return make_offer(job_id, task, SYNTHETIC, model)


async def test_a_json_result_over_the_frame_limit_fails_final_and_the_session_stays(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path,
            peer.base_url,
            engines="synthetic,synthetic",
            faults="slow-job=1",
            max_frame_bytes=LIMIT_BYTES,
        ) as run,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        # Another job runs meanwhile: it must not be dropped with the session.
        await conn.send(llm_offer("job-other", "meanwhile", model="synthetic-slow"))
        assert (await conn.expect(studio.Accept)).job_id == "job-other"
        # Its prompt alone fits in an offer, but the result echoes it: over the limit.
        await conn.send(llm_offer("job-big", "x" * (LIMIT_BYTES + 1)))
        assert (await conn.expect(studio.Accept)).job_id == "job-big"
        fail = await conn.expect(studio.Fail)
        assert fail.job_id == "job-big"
        assert fail.retryable is False
        assert f"over the studio's frame limit of {LIMIT_BYTES} bytes (max_frame_bytes)" in (
            fail.error
        )
        done = await conn.expect(studio.CompleteJson)
        assert done.job_id == "job-other"
        assert peer.connections == [conn], "the session was never dropped"
        assert run.sup.lanes[0].state.job_outcomes["failed_final"] == 1
        assert run.sup.lanes[0].state.job_failures["result_too_large"] == 1


async def test_jobs_cut_short_by_a_dropped_session_are_logged_with_their_ids(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "supervisor.session.jobs")
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, engines="synthetic,synthetic", faults="slow-job=30"
        ) as run,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        for job_id in ("job-a", "job-b"):
            await conn.send(llm_offer(job_id, "take your time", model="synthetic-slow"))
            assert (await conn.expect(studio.Accept)).job_id == job_id
        await conn.close(1000, "")
        # The next session starts only after the last one's jobs are gone.
        again = await peer.next_connection()
        await again.handshake()
        cancelled = {
            r.job_id: r.getMessage()  # type: ignore[attr-defined]
            for r in caplog.records
            if "cancelled: the studio session ended while it ran" in r.getMessage()
        }
        assert set(cancelled) == {"job-a", "job-b"}
        assert all(job_id in text for job_id, text in cancelled.items())
        # Each host was told to stop its job; neither was restarted.
        for slot in run.sup.pool.slots:
            assert await slot.wait_ready(10)
            assert slot.restarts == 0
