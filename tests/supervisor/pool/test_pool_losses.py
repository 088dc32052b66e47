"""Who pays for a lost host, and the limits of a download, with real synthetic engine hosts
(subprocesses) and real ZeroMQ: bad jobs take strikes and never park the slot, a broken
engine parks it and strikes no job, a download answers to its own limits instead of the job
deadline, and fault model ids act only with ``STUDIO_WORKER_FAULTS=1``.
"""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from engines.faults import CRASH_EXIT_CODE, FAULTS_ENV, START_CRASH_EXIT_CODE
from supervisor.pool.slot_state import SlotState
from tests.support.pool_harness import failed, run_job, running_pool, succeeded, with_faults

pytestmark = pytest.mark.anyio


def watch_states(run) -> list[SlotState]:  # type: ignore[no-untyped-def]
    """Every state the first slot passes through from now on, seen at each change."""
    seen: list[SlotState] = []
    run.pool.add_listener(lambda: seen.append(run.slot.state))
    return seen


async def test_a_job_that_crashes_two_proven_hosts_is_poison(tmp_path):
    async with running_pool(tmp_path) as run:
        await run.ready()
        slot = run.slot
        poison = run.pool.poison
        first = failed(await run.run_one(run_job("poison-1", "synthetic-crash")))
        assert first.retryable and first.reason == "exit"
        # The fresh host proves itself (its probe passes): the loss was the job's.
        await run.ready_again(slot, None)
        assert poison.strikes_of("poison-1") == 1 and slot.core.crash_loop_count == 0
        second = failed(await run.run_one(run_job("poison-1", "synthetic-crash")))
        assert second.retryable, "a loss is a strike only once a fresh host proved itself"
        await run.ready_again(slot, None)
        assert poison.is_poison("poison-1")
        # Offered anyway (the router refuses it; a pool caller need not): final.
        third = failed(await run.run_one(run_job("poison-1", "synthetic-crash")))
        assert not third.retryable
        assert third.reason == "poison"
        assert "not retried" in third.error
        assert f"exit code {CRASH_EXIT_CODE}" in third.error
        await run.ready_again(slot, None)
        assert slot.restart_causes == {"exit": 3}


async def test_three_bad_jobs_each_crashing_a_host_fail_and_never_park_the_slot(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "supervisor.slot")
    # crash_loop_max=3: were every loss a crash, the third would park the only slot.
    async with running_pool(tmp_path, crash_loop_max=3, crash_loop_window_s=60.0) as run:
        await run.ready()
        slot = run.slot
        states = watch_states(run)
        jobs = {"bad-1": "synthetic-crash", "bad-2": "synthetic-segv", "bad-3": "synthetic-abort"}
        for job_id, model in jobs.items():
            outcome = failed(await run.run_one(run_job(job_id, model)))
            assert outcome.retryable, outcome
            await run.ready_again(slot, None)
        assert SlotState.FAILED not in states
        assert states.count(SlotState.PROVING) == 3, states
        assert slot.parked_until is None and slot.core.crash_loop_count == 0
        assert [run.pool.poison.strikes_of(j) for j in jobs] == [1, 1, 1]
        assert slot.restart_causes == {"exit": 1, "signal": 2}
        struck = [
            r.getMessage() for r in caplog.records if "counts against the job" in r.getMessage()
        ]
        assert len(struck) == 3, struck
        succeeded(await run.run_one(run_job("good-1")))


async def test_a_broken_engine_whose_fresh_hosts_die_parks_and_strikes_no_job(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "supervisor.slot")
    async with running_pool(
        tmp_path, crash_loop_max=3, crash_loop_window_s=60.0, crash_loop_cooldown_s=30.0
    ) as run:
        await run.ready()
        slot = run.slot
        # From now on every host dies as it starts: the driver, not the job, is broken.
        slot.settings = with_faults(slot.settings, "crash-on-start")
        outcome = failed(await run.run_one(run_job("victim-1", "synthetic-crash")))
        assert outcome.retryable
        await run.wait_until(lambda: slot.state is SlotState.FAILED, 10.0, "the slot parked")
        assert slot.restart_causes == {"exit": 3}
        assert slot.last_exit == f"exit code {START_CRASH_EXIT_CODE}"
        assert run.pool.poison.strikes_of("victim-1") == 0
        assert run.pool.capacity() == 0
        assert any(
            "lost during job victim-1 counts toward the crash loop" in r.getMessage()
            for r in caplog.records
        )


async def test_a_download_longer_than_the_job_deadline_is_not_killed(tmp_path):
    deadline_s = 0.4
    async with running_pool(tmp_path, faults="download=1.0") as run:
        await run.ready()
        slot = run.slot
        pid = slot.pid
        async with anyio.create_task_group() as tg:
            job = run.start_job(tg, run_job("dl-1", "synthetic-download", deadline_s=deadline_s))
        done = succeeded(await job.wait())
        assert done.json["object"] == "chat.completion"
        assert done.elapsed_ms >= 1000, "the download took longer than the job deadline"
        phases = [p.phase for p in job.progress]
        assert phases[0] == "downloading" and phases[-1] == "generating"
        assert slot.pid == pid and slot.restarts == 0


async def test_a_download_that_gets_no_bytes_is_a_download_stall_and_no_strike(tmp_path):
    stall_s = 0.5
    async with running_pool(tmp_path, download_stall_s=stall_s) as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        states = watch_states(run)
        started = time.monotonic()
        outcome = failed(await run.run_one(run_job("dl-2", "synthetic-download-stall")))
        elapsed = time.monotonic() - started
        assert stall_s <= elapsed < stall_s + 2.0
        assert outcome.retryable
        assert outcome.reason == "download_stall"
        assert "downloaded nothing for" in outcome.error and "dl-2" in outcome.error
        await run.ready_again(slot, old_pid)
        assert SlotState.PROVING not in states, "a download is never the job's fault"
        assert slot.restart_causes == {"download_stall": 1}
        assert slot.core.crash_loop_count == 1
        assert run.pool.poison.strikes_of("dl-2") == 0


async def test_a_download_past_download_deadline_s_is_stopped(tmp_path):
    limit_s = 0.6
    async with running_pool(tmp_path, faults="download=30", download_deadline_s=limit_s) as run:
        await run.ready()
        slot = run.slot
        started = time.monotonic()
        outcome = failed(await run.run_one(run_job("dl-3", "synthetic-download")))
        assert limit_s <= time.monotonic() - started < limit_s + 2.0
        assert outcome.retryable
        assert outcome.reason == "download_deadline"
        assert "download_deadline_s=0.6" in outcome.error
        await run.ready_again(slot, None)
        assert slot.restart_causes == {"download_deadline": 1}
        assert run.pool.poison.strikes_of("dl-3") == 0


async def test_without_the_faults_environment_a_fault_model_is_an_ordinary_model(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(FAULTS_ENV)  # hosts inherit the supervisor's environment
    async with running_pool(tmp_path) as run:
        await run.ready()
        slot = run.slot
        for job_id, model in [("ord-1", "synthetic-crash"), ("ord-2", "synthetic-segv")]:
            done = succeeded(await run.run_one(run_job(job_id, model)))
            assert done.json["object"] == "chat.completion"
        assert slot.restarts == 0
