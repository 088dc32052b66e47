"""The engine pool under fire: real synthetic engine hosts (subprocesses), real ZeroMQ.

Each case breaks a host the way production breaks them (signals, crashes, hangs, deadlines,
leaks, crash loops, a dead supervisor, garbage on the socket; poison jobs and downloads are
in test_pool_losses.py) and checks the job's outcome (retry rule and cause), the restart
(ready again on a new pid, counters), the timing bound, and, through ``running_pool``, that
no host process is left behind.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

from engines.faults import CRASH_EXIT_CODE, START_CRASH_EXIT_CODE
from engines.synthetic import BLOB_BYTES, BLOB_EXT, BLOB_MODEL, synthetic_blob
from protocol.tasks import ImageTask
from supervisor.pool.policies import RecycleLimits
from supervisor.pool.slot_state import SlotState
from tests.support.pool_harness import (
    failed,
    llm_task,
    run_job,
    running_pool,
    succeeded,
    with_faults,
)

pytestmark = pytest.mark.anyio

SIGKILL_DETECTION_S = 0.1
MIB = 2**20


async def test_two_slots_run_two_jobs_at_once_and_reserve_says_busy(tmp_path):
    async with running_pool(tmp_path, "synthetic,synthetic", faults="slow-job=1") as run:
        await run.ready()
        assert run.pool.capacity() == 2
        assert run.pool.free_slots("synthetic") == 2
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            first = run.start_job(tg, run_job("c-1", "synthetic-slow"))
            second = run.start_job(tg, run_job("c-2", "synthetic-slow"))
            assert first.slot is not second.slot
            assert run.pool.free_slots("synthetic") == 0
            assert run.pool.free_slots("synthetic") == 0
        elapsed = time.monotonic() - started
        for handle in (first, second):
            done = succeeded(handle.outcome)
            assert done.json["object"] == "chat.completion"
            assert done.elapsed_ms >= 1000
        assert elapsed < 1.8, f"two 1 s jobs took {elapsed:.2f} s: not concurrent"
        assert run.pool.free_slots("synthetic") == 2


async def test_sigkill_mid_job_fails_retryable_within_100ms_and_restarts(tmp_path):
    async with running_pool(tmp_path, faults="slow-job=30") as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        assert old_pid is not None
        async with anyio.create_task_group() as tg:
            job = run.start_job(tg, run_job("k-1", "synthetic-slow"))
            await job.wait_running()
            assert slot.state is SlotState.BUSY
            killed_at = time.monotonic()
            os.kill(old_pid, signal.SIGKILL)
            outcome = failed(await job.wait())
        detected_s = job.finished_at - killed_at
        assert detected_s < SIGKILL_DETECTION_S, f"failure seen {detected_s * 1000:.0f} ms late"
        assert outcome.retryable
        assert "killed by SIGKILL" in outcome.error
        assert "k-1" in outcome.error
        assert outcome.reason == "signal"
        await run.ready_again(slot, old_pid)
        assert slot.restarts == 1
        assert slot.restart_causes == {"signal": 1}
        assert slot.last_exit == "killed by SIGKILL"
        assert succeeded(await run.run_one(run_job("k-2"))).json is not None


@pytest.mark.parametrize(
    ("model", "text", "cause"),
    [
        ("synthetic-segv", "killed by SIGSEGV", "signal"),
        ("synthetic-abort", "killed by SIGABRT", "signal"),
        ("synthetic-crash", f"exit code {CRASH_EXIT_CODE}", "exit"),
    ],
)
async def test_host_death_mid_job_fails_retryable_with_the_cause(tmp_path, model, text, cause):
    async with running_pool(tmp_path) as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        outcome = failed(await run.run_one(run_job(f"{model}-1", model)))
        assert outcome.retryable
        assert text in outcome.error
        assert outcome.reason == cause
        assert not run.pool.poison.is_poison(f"{model}-1")
        await run.ready_again(slot, old_pid)
        assert slot.restart_causes == {cause: 1}
        assert slot.last_exit == text


@pytest.mark.parametrize("how", ["synthetic-hang", "SIGSTOP"])
async def test_frozen_host_is_found_by_missing_heartbeats_and_killed(tmp_path, how):
    timeout_s = 0.5
    async with running_pool(
        tmp_path,
        faults="slow-job=30",
        heartbeat_timeout_busy_s=timeout_s,
        heartbeat_timeout_idle_s=timeout_s,
    ) as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        assert old_pid is not None
        async with anyio.create_task_group() as tg:
            if how == "SIGSTOP":
                job = run.start_job(tg, run_job("h-1", "synthetic-slow"))
                await job.wait_running()
                frozen_at = time.monotonic()
                os.kill(old_pid, signal.SIGSTOP)
            else:
                frozen_at = time.monotonic()
                job = run.start_job(tg, run_job("h-1", "synthetic-hang"))
            outcome = failed(await job.wait())
        detected_s = job.finished_at - frozen_at
        assert timeout_s * 0.8 < detected_s < timeout_s + 1.0, f"hang seen after {detected_s:.2f} s"
        assert outcome.retryable
        assert "stopped responding" in outcome.error
        assert outcome.reason == "hang"
        await run.ready_again(slot, old_pid)
        assert slot.restart_causes == {"hang": 1}
        assert slot.last_exit == "killed by SIGKILL"


async def test_job_past_its_deadline_gets_its_host_killed_and_restarted(tmp_path):
    deadline_s = 0.3
    async with running_pool(tmp_path, faults="slow-job=30") as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        started = time.monotonic()
        outcome = failed(await run.run_one(run_job("d-1", "synthetic-slow", deadline_s=deadline_s)))
        elapsed = time.monotonic() - started
        assert deadline_s <= elapsed < deadline_s + 1.0
        assert outcome.retryable
        assert "ran past the job deadline of 0.3 s" in outcome.error
        assert outcome.reason == "deadline"
        await run.ready_again(slot, old_pid)
        assert slot.restart_causes == {"deadline": 1}
        assert slot.last_exit == "killed by SIGKILL"


async def test_memory_growth_recycles_the_host_after_the_job_not_as_a_crash(tmp_path):
    # crash_loop_max=1: were the recycle counted as a crash, the slot would park at once.
    async with running_pool(
        tmp_path,
        faults="leak-mb=64",
        crash_loop_max=1,
        recycle=RecycleLimits(after_jobs=0, rss_growth_bytes=32 * MIB, vram_growth_bytes=0),
    ) as run:
        await run.ready()
        slot = run.slot
        old_pid = slot.pid
        done = succeeded(await run.run_one(run_job("leak-1", "synthetic-leak")))
        assert done.json["object"] == "chat.completion"
        await run.ready_again(slot, old_pid)
        assert slot.restart_causes == {"recycle": 1}
        assert slot.last_exit == "exit code 0", "a recycle stops the host politely"
        assert slot.parked_until is None


async def test_host_is_recycled_after_n_jobs(tmp_path):
    async with running_pool(
        tmp_path, recycle=RecycleLimits(after_jobs=2, rss_growth_bytes=0, vram_growth_bytes=0)
    ) as run:
        await run.ready()
        slot = run.slot
        first_pid = slot.pid
        succeeded(await run.run_one(run_job("n-1")))
        assert slot.pid == first_pid and slot.restarts == 0
        succeeded(await run.run_one(run_job("n-2")))
        await run.ready_again(slot, first_pid)
        assert slot.restart_causes == {"recycle": 1}
        succeeded(await run.run_one(run_job("n-3")))


async def test_a_recycling_slot_takes_no_job_while_its_old_host_stops(tmp_path):
    async with running_pool(
        tmp_path, recycle=RecycleLimits(after_jobs=1, rss_growth_bytes=0, vram_growth_bytes=0)
    ) as run:
        await run.ready()
        slot = run.slot
        first_pid = slot.pid
        seen: list[tuple[SlotState, bool, bool]] = []
        # Observed synchronously at each transition, while the old host may still be alive.
        run.pool.add_listener(
            lambda: seen.append(
                (slot.state, slot.host is not None and slot.host.exit is None, slot.is_free)
            )
        )
        succeeded(await run.run_one(run_job("r-1")))
        await run.ready_again(slot, first_pid)
        leaving = next(i for i, seen_at in enumerate(seen) if seen_at[0] is SlotState.RESTARTING)
        assert seen[leaving] == (SlotState.RESTARTING, True, False), seen
        # From the job's start until the old host is gone, nothing could reserve the slot.
        assert not any(free for _, _, free in seen[: leaving + 1]), seen


async def test_crash_loop_parks_the_slot_until_the_cool_down(tmp_path):
    cool_down_s = 1.0
    async with running_pool(
        tmp_path,
        faults="crash-on-start",
        crash_loop_max=3,
        crash_loop_window_s=30.0,
        crash_loop_cooldown_s=cool_down_s,
    ) as run:
        slot = run.slot
        await run.wait_until(lambda: slot.state is SlotState.FAILED, 10.0, "the slot parked")
        parked_at = time.monotonic()
        assert slot.restart_causes == {"exit": 3}
        assert slot.last_exit == f"exit code {START_CRASH_EXIT_CODE}"
        assert run.pool.models_per_kind() == {}
        assert run.pool.capacity() == 0
        assert run.pool.free_slots("synthetic") == 0
        # The operator fixes the cause during the cool-down; the next generation starts clean.
        slot.settings = with_faults(slot.settings, "")
        await run.wait_until(lambda: slot.state is SlotState.READY, 10.0, "back after cool-down")
        assert time.monotonic() - parked_at >= cool_down_s * 0.9
        assert run.pool.capacity() == 1
        assert "synthetic-llm" in run.pool.models_per_kind()["llm"]
        succeeded(await run.run_one(run_job("after-park")))


async def test_slow_start_past_the_ready_timeout_restarts_the_host(tmp_path):
    async with running_pool(tmp_path, faults="slow-start=30", ready_timeout_s=0.3) as run:
        slot = run.slot
        started = time.monotonic()
        await run.wait_until(
            lambda: slot.restart_causes["ready_timeout"] >= 1, 5.0, "a ready timeout"
        )
        assert time.monotonic() - started >= 0.3
        assert slot.last_exit == "killed by SIGKILL"
        assert slot.state in (SlotState.RESTARTING, SlotState.STARTING)
        assert run.pool.capacity() == 0
        # A host that never connected cannot read a Shutdown: no waiting out its grace.
        await run.wait_until(lambda: slot.state is SlotState.STARTING, 5.0, "the next host")
        started = time.monotonic()
        await run.pool.drain(5.0)
        assert time.monotonic() - started < run.pool.settings.shutdown_grace_s


async def test_host_with_its_job_ends_politely_on_drain(tmp_path):
    async with running_pool(tmp_path, faults="slow-job=0.5") as run:
        await run.ready()
        slot = run.slot
        async with anyio.create_task_group() as tg:
            job = run.start_job(tg, run_job("drain-1", "synthetic-slow"))
            await job.wait_running()
            with anyio.fail_after(5):
                await run.pool.drain(5.0)
            assert job.done.is_set(), "drain returned before its job finished"
        succeeded(job.outcome)
        assert slot.state is SlotState.STOPPED
        exit_info = slot.exit_info()
        assert exit_info is not None and exit_info.returncode == 0
        assert run.pool.free_slots("synthetic") == 0


async def test_drain_grace_over_kills_the_host_and_fails_the_job_retryable(tmp_path):
    grace_s = 0.3
    async with running_pool(tmp_path, faults="slow-job=30") as run:
        await run.ready()
        slot = run.slot
        async with anyio.create_task_group() as tg:
            job = run.start_job(tg, run_job("drain-2", "synthetic-slow"))
            await job.wait_running()
            started = time.monotonic()
            with anyio.fail_after(5):
                await run.pool.drain(grace_s)
            elapsed = time.monotonic() - started
        outcome = failed(job.outcome)
        assert outcome.retryable
        assert outcome.reason == "shutdown"
        assert "drain-2" in outcome.error
        assert grace_s <= elapsed < grace_s + 1.0
        assert slot.state is SlotState.STOPPED
        assert slot.last_exit == "killed by SIGKILL"


async def test_large_binary_result_arrives_intact(tmp_path):
    async with running_pool(tmp_path) as run:
        await run.ready()
        task = ImageTask(prompt="eight mebibytes")
        done = succeeded(await run.run_one(run_job("blob-1", BLOB_MODEL, task)))
        assert done.ext == BLOB_EXT
        data = done.payload_view()
        assert len(data) == BLOB_BYTES
        assert data == synthetic_blob("eight mebibytes")
        assert done.json is None


async def test_llm_result_round_trip(tmp_path):
    async with running_pool(tmp_path) as run:
        await run.ready()
        done = succeeded(await run.run_one(run_job("llm-1", task=llm_task("say hi"))))
        assert done.json["choices"][0]["message"]["content"].startswith("[synthetic] reply")
        assert done.payload is None
        assert run.slot.jobs_done == 1


async def test_a_caller_that_gives_up_cancels_the_job_on_the_host(tmp_path):
    async with running_pool(tmp_path, faults="slow-job=30") as run:
        await run.ready()
        slot = run.slot
        pid = slot.pid
        assert run.pool.reserve(slot.slot_id, "cancel-1") is slot
        # Cancelled at once: RunJob and CancelJob leave back to back, and the cancel must
        # not be lost however the host's threads interleave with it.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await slot.execute(run_job("cancel-1", "synthetic-slow"), None)
        assert scope.cancelled_caught
        assert slot.state is SlotState.BUSY, "busy until the host says the job is over"
        await run.wait_until(lambda: slot.state is SlotState.READY, 3.0, "the job cancelled")
        assert slot.pid == pid
        assert slot.restarts == 0
        succeeded(await run.run_one(run_job("after-cancel")))
