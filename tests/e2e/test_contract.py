"""The local studio contract, end to end with real processes only: ``python -m localstudio``
and ``supervisor start --engines synthetic`` (engine hosts, ZeroMQ, WebSocket, HTTP
uploads), driven through the local studio's ``/local`` API and the ``supervisor`` CLI.

Synthetic-only: no model library or GPU is needed. Nothing sleeps to wait for a condition:
jobs are awaited with the studio's long poll, processes through their log lines, and the
few states nothing announces (a heartbeat landing) through bounded polling.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from engines.synthetic import synthetic_image, synthetic_llm, synthetic_stt, synthetic_tts
from localstudio.api_types import JobStatusName, JobView, WorkerView
from localstudio.client import LocalStudioClient
from protocol.tasks import (
    AudioSttTask,
    AudioTtsTask,
    ChatMessage,
    ImageTask,
    LlmTask,
    ModelCliDefaults,
    ModelSource,
    Task,
    VideoTask,
)
from supervisor.cli.start_command import (
    LOCAL_REGISTRATION_POLL_S,
    REGISTRATION_POLL_ENV,
    registration_poll_s,
)
from supervisor.config import load_config
from supervisor.errors import UsageError
from supervisor.studio.registration import POLL_INTERVAL_S
from tests.support.contract_harness import (
    WELCOMED,
    Processes,
    StudioProcess,
    SupervisorProcess,
    free_port,
    job_outcomes,
    poll_until,
    slot_lines,
    start_studio,
    start_supervisor,
    write_worker_config,
)

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
JOB_TIMEOUT_S = 60.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Longer than any preview, with non-ASCII text: the studio must store the full prompt.
LONG_PROMPT = "an aurora fox at dusk, ünïcödé ✨ " + "with a very long tail, " * 20


SupervisorFactory = Callable[..., SupervisorProcess]


@pytest.fixture
def make_supervisor(processes: Processes, tmp_path: Path) -> SupervisorFactory:
    """``make_supervisor(studio, name=..., engines=..., *start_args, **config)``: a fresh
    worker (own config dir, no credentials) started against ``studio``."""
    counter = iter(range(1, 100))

    def make(
        studio: StudioProcess,
        *args: str,
        engines: str = "synthetic",
        name: str | None = None,
        **config: Any,
    ) -> SupervisorProcess:
        label = name or f"supervisor-{next(counter)}"
        path = tmp_path / label / "config.toml"
        write_worker_config(path, studio.api_base_url, **config)
        return start_supervisor(processes, path, *args, engines=engines, name=label)

    return make


def submit(
    client: LocalStudioClient, task: Task, model: str = "synthetic", **kwargs: Any
) -> JobView:
    return client.submit_job(model, task, SYNTHETIC, **kwargs)


def wait_done(client: LocalStudioClient, job: JobView) -> JobView:
    return client.wait_for_job(job.id, timeout_s=JOB_TIMEOUT_S)


def llm(text: str) -> LlmTask:
    return LlmTask(messages=[ChatMessage("user", text)], max_tokens=8)


def connected_workers(client: LocalStudioClient, count: int = 1) -> list[WorkerView]:
    def probe() -> list[WorkerView] | None:
        live = [w for w in client.workers() if w.connected]
        return live if len(live) >= count else None

    return poll_until(probe, 30, f"{count} connected worker(s)")


# --- 1. registration with operator approval -----------------------------------------------


def test_registration_waits_for_operator_approval_then_serves(
    processes: Processes, tmp_path: Path, make_supervisor: SupervisorFactory
) -> None:
    studio = start_studio(processes, tmp_path / "studio-data", auto_approve=False)
    with studio.client as client:
        sup = make_supervisor(studio)
        assert not load_config(sup.config_path).has_credentials
        _, match = sup.proc.log.wait_for(r"waiting for operator approval \(request (\S+)\)")
        request_id = match.group(1)

        pending = client.pending()
        assert [r.request_id for r in pending] == [request_id]
        assert pending[0].status == "pending"
        assert pending[0].capabilities.task_kinds  # what the worker advertised
        assert client.workers() == []
        listed = processes.run_cli("studio", "pending", "--studio", studio.url)
        assert listed.returncode == 0, listed.stderr
        assert request_id in listed.stdout

        approved = client.approve(request_id)
        assert approved.status == "approved"
        assert approved.worker_id is not None
        sup.wait_welcomed()
        assert client.pending() == []
        (worker,) = connected_workers(client)
        assert worker.worker_id == approved.worker_id
        cfg = load_config(sup.config_path)
        assert cfg.worker_id == approved.worker_id
        assert cfg.auth_token  # persisted, so a restart does not register again
        assert cfg.registration_request_id is None

        job = wait_done(client, submit(client, llm("hello after approval")))
        assert job.status == "done", job.error
        assert job.claimed_by == approved.worker_id
        assert job.attempts == 0


# --- 2. one job of every kind ---------------------------------------------------------------


def test_every_kind_round_trips(studio: StudioProcess, make_supervisor: SupervisorFactory) -> None:
    client = studio.client
    sup = make_supervisor(studio, "--log-format", "json")
    sup.wait_welcomed()
    stt_url = "https://assets.example/" + "clip-" * 40 + ".wav"
    tasks: dict[str, Task] = {
        "png": ImageTask(prompt=LONG_PROMPT, ext="png"),
        "webp": ImageTask(prompt=LONG_PROMPT + " webp", ext="webp"),
        "llm": LlmTask(
            messages=[ChatMessage("system", "be brief"), ChatMessage("user", LONG_PROMPT)]
        ),
        "stt": AudioSttTask(input_url=stt_url, language="nl"),
        "tts": AudioTtsTask(text=LONG_PROMPT + " spoken"),
        "video": VideoTask(prompt=LONG_PROMPT + " moving"),
    }
    submitted = {name: submit(client, task) for name, task in tasks.items()}
    jobs = {name: wait_done(client, job) for name, job in submitted.items()}
    for name, job in jobs.items():
        assert job.status == "done", (name, job.error)
        assert job.attempts == 0, name

    def asset(name: str) -> bytes:
        job = jobs[name]
        assert job.result is None
        assert job.asset_path is not None
        data = client.get_asset(job.id)
        assert (studio.data_dir / job.asset_path).read_bytes() == data  # stored on disk
        return data

    png = asset("png")
    assert png.startswith(PNG_MAGIC)
    assert png == synthetic_image(LONG_PROMPT, "png")
    assert jobs["png"].asset_path.endswith(".png")  # type: ignore[union-attr]
    assert jobs["png"].prompt == LONG_PROMPT

    webp = asset("webp")
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"
    assert webp == synthetic_image(LONG_PROMPT + " webp", "webp")
    assert jobs["webp"].prompt == LONG_PROMPT + " webp"

    wav = asset("tts")
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert wav == synthetic_tts(LONG_PROMPT + " spoken")
    assert jobs["tts"].asset_path.endswith(".wav")  # type: ignore[union-attr]
    assert jobs["tts"].prompt == LONG_PROMPT + " spoken"

    video = asset("video")
    assert video[:4] == b"RIFF" and video[8:12] == b"WEBP"  # the synthetic "video" frame
    assert jobs["video"].prompt == LONG_PROMPT + " moving"

    chat = jobs["llm"]
    assert chat.asset_path is None
    assert chat.result["object"] == "chat.completion"
    assert chat.result == synthetic_llm(tasks["llm"])  # type: ignore[arg-type]
    assert chat.prompt == LONG_PROMPT  # the last message, in full

    transcript = jobs["stt"]
    assert transcript.asset_path is None
    assert transcript.result == synthetic_stt(tasks["stt"])  # type: ignore[arg-type]
    assert transcript.result["language"] == "nl"
    assert transcript.prompt == stt_url

    # Binary results went by multipart upload, JSON ones by completeJson on the socket.
    for name in ("png", "webp", "tts", "video"):
        sup.proc.log.wait_for(f"binary upload ok job {jobs[name].id} ", 10)
    for name in ("llm", "stt"):
        sup.proc.log.wait_for(f'"json result sent [^"]*", "job_id": "{jobs[name].id}"', 10)
    outcomes = job_outcomes(sup.status())
    assert outcomes.get("done") == len(tasks)


# --- 3. busy and paused rejects are requeued without attempts --------------------------------


def _heartbeat_at(client: LocalStudioClient) -> str | None:
    (worker,) = client.workers()
    return worker.last_heartbeat_at


def test_paused_worker_rejects_without_attempts_and_resumes(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    client = studio.client
    sup = make_supervisor(studio)
    sup.wait_welcomed()
    # Start right after a heartbeat, so the studio still believes the worker takes offers
    # when the jobs arrive: the first is offered and must be rejected `paused`.
    first_seen = poll_until(lambda: _heartbeat_at(client), 15, "a first heartbeat")
    aligned = poll_until(
        lambda: beat if (beat := _heartbeat_at(client)) != first_seen else None,
        15,
        "the next heartbeat",
    )
    assert "paused: new offers are rejected" in sup.cli("pause").stdout
    jobs = [submit(client, llm(f"paused job {i}")) for i in range(3)]
    offered_while_unaware = _heartbeat_at(client) == aligned

    # The next heartbeat says autoEnabled=false; the studio offers on every heartbeat, so
    # once it has landed, still-queued jobs prove nothing more is offered while paused.
    def paused_heartbeat() -> str | None:
        (worker,) = client.workers()
        caps = worker.capabilities
        return worker.last_heartbeat_at if caps is not None and not caps.auto_enabled else None

    poll_until(paused_heartbeat, 15, "a heartbeat advertising autoEnabled=false")
    for job in jobs:
        now = client.get_job(job.id)
        assert (now.status, now.attempts, now.claimed_by) == ("queued", 0, None)
    status = sup.status()
    assert "claiming:           paused" in status
    rejected = job_outcomes(status).get("rejected_paused", 0)
    # One offer at most: a transient reject holds the studio off until the next heartbeat.
    assert rejected == 1 if offered_while_unaware else rejected <= 1, (rejected, status)

    assert "resumed" in sup.cli("resume").stdout
    for job in jobs:
        done = wait_done(client, job)
        assert (done.status, done.attempts) == ("done", 0), done.error
    assert job_outcomes(sup.status()).get("done") == len(jobs)


def test_busy_reject_is_requeued_without_an_attempt(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    """The local studio honours maxConcurrentJobs, so "busy" comes from a stale view: with
    ``recycle_after_jobs = 1`` the host restarts after every job, and the studio offers the
    next job the moment the first completes, while the only slot is still restarting."""
    client = studio.client
    sup = make_supervisor(studio, recycle_after_jobs=1)
    sup.wait_welcomed()
    first = submit(client, llm("first"))
    second = submit(client, llm("second"))
    for job in (first, second):
        done = wait_done(client, job)
        assert (done.status, done.attempts) == ("done", 0), done.error
    outcomes = job_outcomes(sup.status())
    assert outcomes.get("rejected_busy", 0) >= 1, outcomes
    assert outcomes.get("done") == 2


def test_slow_job_keeps_the_second_job_queued_then_both_done(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    client = studio.client
    sup = make_supervisor(studio, "--faults", "slow-job=1.5")
    sup.wait_welcomed()
    slow = submit(client, llm("slow"), model="synthetic-slow")
    claimed: tuple[JobStatusName, ...] = ("claimed",)
    client.wait_for_job(slow.id, until=claimed, timeout_s=JOB_TIMEOUT_S)
    second = submit(client, llm("waits its turn"))
    assert client.get_job(second.id).status == "queued"  # one slot, one job in flight
    assert wait_done(client, slow).status == "done"
    done = wait_done(client, second)
    assert (done.status, done.attempts) == ("done", 0), done.error


# --- 4. engine crashes --------------------------------------------------------------------


def test_engine_crash_mid_job_is_requeued_then_done(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    client = studio.client
    # Each host generation runs one job, then exits 3 when its second job starts.
    sup = make_supervisor(studio, "--faults", "crash-after=1")
    sup.wait_welcomed()
    first = wait_done(client, submit(client, llm("runs on the first host")))
    assert (first.status, first.attempts) == ("done", 0), first.error
    crashed = wait_done(client, submit(client, ImageTask(prompt="kills the first host")))
    assert (crashed.status, crashed.attempts) == ("done", 1), crashed.error
    assert client.get_asset(crashed.id) == synthetic_image("kills the first host", "webp")

    status = sup.status()
    (row,) = [line for line in slot_lines(status) if line.startswith("synthetic-")]
    assert "ready" in row.split()[1]
    assert "1 (exit=1)" in row
    assert "last exit: exit code 3" in status, status
    outcomes = job_outcomes(status)
    assert outcomes.get("failed_retryable") == 1
    assert outcomes.get("done") == 2


def test_poison_job_fails_for_good_after_two_host_crashes(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    client = studio.client
    sup = make_supervisor(studio)
    sup.wait_welcomed()
    job = wait_done(client, submit(client, llm("crash every host"), model="synthetic-crash"))
    assert job.status == "failed"
    # Both crashes fail retryable (each is the job's strike once the next host passed its
    # probe); the third offer of the now poison job is refused without touching a host.
    assert job.attempts == 3
    assert job.error is not None
    assert "has already taken down an engine host twice" in job.error
    # The worker is fine afterwards.
    after = wait_done(client, submit(client, llm("still serving")))
    assert (after.status, after.attempts) == ("done", 0), after.error
    outcomes = job_outcomes(sup.status())
    assert outcomes.get("failed_final") == 1
    assert outcomes.get("failed_retryable") == 2


# --- 5. the studio restarted mid-run --------------------------------------------------------


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_studio_restart_mid_run_loses_nothing(
    processes: Processes,
    tmp_path: Path,
    make_supervisor: SupervisorFactory,
    kill_signal: signal.Signals,
) -> None:
    port = free_port()
    data_dir = tmp_path / "studio-data"
    studio = start_studio(processes, data_dir, port=port)
    sup = make_supervisor(studio, "--faults", "slow-job=0.3", engines="synthetic,synthetic")
    welcomed = sup.wait_welcomed()
    jobs = []
    with studio.client as client:
        for i in range(16):
            task = ImageTask(prompt=f"restart {i}", ext="png") if i % 4 == 0 else llm(f"r{i}")
            jobs.append(submit(client, task, model="synthetic" if i % 4 == 0 else "synthetic-slow"))
        # Kill it with work in every state: some done, two claimed (running), the rest queued.
        wait_done(client, jobs[1])
        before = collections.Counter(j.status for j in client.list_jobs())
    assert before["queued"] > 0, before
    assert before["claimed"] > 0, before
    if kill_signal == signal.SIGKILL:
        studio.proc.expected_codes = frozenset({-signal.SIGKILL})
    processes.stop(studio.proc, sig=kill_signal)

    again = start_studio(processes, data_dir, port=port, name="studio-restarted")
    assert again.port == port
    with again.client as client:
        sup.wait_welcomed(start=welcomed + 1)
        final = [wait_done(client, job) for job in jobs]
        for job in final:
            assert job.status == "done", (job.id, job.error)
            assert job.attempts == 0, (job.id, job.error)  # orphaned claims cost no attempt
        assert len(client.list_jobs()) == len(jobs)
        assert client.get_asset(jobs[0].id).startswith(PNG_MAGIC)
    done_lines = sup.proc.log.count(r"binary upload ok job|json result sent")
    assert done_lines >= len(jobs)


# --- 6. two supervisors drain a queue of 200 ---------------------------------------------------


def test_two_supervisors_drain_200_jobs_exactly_once(
    studio: StudioProcess, make_supervisor: SupervisorFactory
) -> None:
    client = studio.client
    sups = [
        make_supervisor(studio, "--log-format", "json", engines="synthetic,synthetic")
        for _ in range(2)
    ]
    for sup in sups:
        sup.proc.log.wait_for(r"server welcomed")
    connected_workers(client, 2)

    tasks: list[Task] = []
    for i in range(200):
        if i % 25 == 0:
            tasks.append(ImageTask(prompt=f"drain image {i}", ext="png"))
        elif i % 2:
            tasks.append(llm(f"drain {i}"))
        else:
            tasks.append(AudioSttTask(input_url=f"https://assets.example/drain-{i}.wav"))
    jobs = [submit(client, task) for task in tasks]
    final = [wait_done(client, job) for job in jobs]

    for job, task in zip(final, tasks, strict=True):
        assert (job.status, job.attempts) == ("done", 0), (job.id, job.error)
        if isinstance(task, ImageTask):
            assert job.asset_path is not None
            assert (studio.data_dir / job.asset_path).read_bytes().startswith(PNG_MAGIC)
        else:
            assert job.result is not None
    ids = {job.id for job in final}
    assert len(ids) == 200

    # Exactly once: every job dispatched to an engine once and delivered once, over both.
    dispatched: collections.Counter[str] = collections.Counter()
    delivered: collections.Counter[str] = collections.Counter()
    per_worker = []
    for sup in sups:
        entries = sup.json_logs()
        mine = {e["job_id"] for e in entries if e["message"].startswith("dispatching job")}
        per_worker.append(len(mine))
        for entry in entries:
            if entry["message"].startswith("dispatching job"):
                dispatched[entry["job_id"]] += 1
            if entry["message"].startswith(("binary upload ok", "json result sent")):
                delivered[entry["job_id"]] += 1
    assert set(dispatched) == ids
    assert set(delivered) == ids
    assert max(dispatched.values()) == 1
    assert max(delivered.values()) == 1
    assert all(n > 0 for n in per_worker), per_worker  # both supervisors took work
    claimed_by = collections.Counter(job.claimed_by for job in final)
    assert len(claimed_by) == 2
    totals = [job_outcomes(sup.status()).get("done", 0) for sup in sups]
    assert sum(totals) == 200
    assert sorted(totals) == sorted(claimed_by.values())


# --- 7. `supervisor start --local` and `supervisor submit` -------------------------------------


def test_start_local_then_submit_saves_the_asset(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "local" / "config.toml"  # not the real home's config
    port = free_port()
    # Without the test suite's fast registration poll: --local must not wait 30 s for it.
    sup = start_supervisor(
        processes,
        config,
        "--local",
        "--local-port",
        str(port),
        name="supervisor-local",
        unset=(REGISTRATION_POLL_ENV,),
    )
    sup.proc.log.wait_for(r"local studio running at")
    sup.proc.log.wait_for(WELCOMED)
    url = f"http://127.0.0.1:{port}"
    assert load_config(config).api_base_url == url + "/"
    assert load_config(config).has_credentials  # approved itself

    out = tmp_path / "out"
    done = processes.run_cli(
        "submit",
        "--studio",
        url,
        "--kind",
        "image",
        "--prompt",
        "a fox",
        "--model",
        "synthetic",
        "--out",
        str(out),
        "--timeout",
        "60",
    )
    assert done.returncode == 0, done.stderr
    saved = Path(done.stdout.strip().rsplit(" saved to ", 1)[1])
    assert saved.parent == out
    data = saved.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"  # ImageTask's default ext
    assert data == synthetic_image("a fox", "webp")

    status = sup.status()
    assert "supervisor:         running" in status
    assert "session:            " in status and "as w" in status
    rows = slot_lines(status)
    assert any(row.startswith("synthetic-default-0") and " ready " in f" {row} " for row in rows)
    assert job_outcomes(status).get("done") == 1

    jobs = processes.run_cli("studio", "jobs", "--studio", url)
    assert jobs.returncode == 0, jobs.stderr
    assert "done" in jobs.stdout and "image" in jobs.stdout

    sup.proc.note_descendants()  # engine host and the local studio: both must go with it
    assert len(sup.proc.descendants) >= 2
    assert processes.stop(sup.proc) == 0


def test_registration_poll_defaults_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REGISTRATION_POLL_ENV, raising=False)
    assert registration_poll_s(local=False) == POLL_INTERVAL_S
    assert registration_poll_s(local=True) == LOCAL_REGISTRATION_POLL_S
    monkeypatch.setenv(REGISTRATION_POLL_ENV, "0.25")
    assert registration_poll_s(local=False) == 0.25
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(REGISTRATION_POLL_ENV, bad)
        with pytest.raises(UsageError, match=REGISTRATION_POLL_ENV):
            registration_poll_s(local=True)


# --- the harness itself -----------------------------------------------------------------------


def test_harness_fails_a_test_that_leaves_processes_behind(tmp_path: Path) -> None:
    """A process that ignores SIGTERM, and a grandchild that outlives its parent, are
    killed at teardown and reported as a failure."""
    stubborn = (
        "import signal\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    orphaning = (
        "import subprocess, sys, signal\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); signal.pause()'], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    registry = Processes(tmp_path, stop_grace_s=1.0)
    procs = [
        registry.spawn("stubborn", [sys.executable, "-c", stubborn]),
        registry.spawn("orphaning", [sys.executable, "-c", orphaning]),
    ]
    for proc in procs:
        proc.log.wait_for("ready")
    procs[1].expected_codes = frozenset({-signal.SIGTERM})
    with pytest.raises(pytest.fail.Exception) as failure:
        registry.close()
    message = str(failure.value)
    assert "stubborn ignored SIGTERM" in message
    assert "processes left behind" in message
    assert "orphaning" not in message.split("processes left behind")[0]
    for proc in procs:
        assert not proc.alive()
    assert procs[1].descendants
    for pid in procs[1].descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
