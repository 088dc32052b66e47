"""The metrics endpoint for real: the in-process supervisor (synthetic engine hosts as real
subprocesses) against a scripted studio peer, scraped over HTTP with httpx and parsed with
prometheus_client's own parser. Plus the pure pieces (listen address, histograms, progress
accounting) without a loop."""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import ipc, studio
from supervisor.config import WorkerConfig
from supervisor.errors import MetricsListenError
from supervisor.ops.metrics_server import parse_listen
from supervisor.runtime import StartOptions, Supervisor
from supervisor.stats import DurationHistogram, ProgressStats
from supervisor.worker_state import ActiveJob, WorkerState
from tests.supervisor.studio.test_session import image_task, llm_task, offer
from tests.support.studio_peer import PeerConnection, running_peer
from tests.support.supervisor_harness import (
    FAST,
    RunningSupervisor,
    running_supervisor,
    write_config,
)

SLOT = {"engine": "synthetic", "slot": "synthetic-default-0", "gpu": ""}
MAIN = {"lane": "main"}  # the one lane of a supervisor without --lanes per-gpu

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def client_for(run: RunningSupervisor) -> httpx.AsyncClient:
    assert run.sup.metrics is not None
    return httpx.AsyncClient(base_url=run.sup.metrics.url, timeout=5.0)


async def wait_for_log(conn: PeerConnection, prefix: str, job_id: str) -> None:
    """Until the studio is shipped the log line ``prefix`` for ``job_id``."""
    with anyio.fail_after(10):
        while True:
            batch = await conn.expect(
                studio.LogBatch, skip=(studio.Heartbeat, studio.Fail, studio.CompleteJson)
            )
            if any(e.message.startswith(prefix) and e.job_id == job_id for e in batch.entries):
                return


pytestmark = pytest.mark.anyio


async def test_health_readiness_and_metrics_follow_the_worker(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
    ):
        # The session starts after the hosts are up and the metrics server is listening.
        conn = await peer.next_connection()
        await conn.expect(studio.Hello)
        async with client_for(run) as client:
            health = await client.get("/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.text == "not welcomed by the studio (session awaiting_welcome)\n"
            before = await scrape(client)
            assert (
                value(before, "studio_worker_session_phase", **MAIN, phase="awaiting_welcome") == 1
            )
            assert value(before, "studio_worker_session_phase", **MAIN, phase="welcomed") == 0
            assert value(before, "studio_worker_slot_state", **SLOT, state="ready") == 1
            assert value(before, "studio_worker_slot_state", **SLOT, state="busy") == 0
            assert value(before, "studio_worker_jobs_total", **MAIN, outcome="done") == 0
            assert value(before, "studio_worker_engine_restarts_total", **SLOT, cause="exit") == 0
            assert value(before, "studio_worker_host_rss_bytes", **SLOT) > 0
            assert value(before, "studio_worker_ready") == 0
            assert (
                "studio_worker_heartbeat_ack_age_seconds",
                frozenset(MAIN.items()),
            ) not in before
            assert value(before, "process_resident_memory_bytes") > 0  # the supervisor itself

            await conn.send(studio.Welcome(worker_id="w-1", server_time="now"))
            await conn.expect(studio.Heartbeat)  # only sent once welcomed
            await conn.send(studio.HeartbeatAck())
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.text == "ready: welcomed as w-1, 1 of 1 slots serving\n"

            # A job that succeeds moves the outcome, the duration histogram, the slot.
            await conn.send(offer("job-ok", llm_task()))
            await conn.expect(studio.Accept)
            await wait_for_log(conn, "json result sent", "job-ok")
            after_job = await scrape(client)
            assert value(after_job, "studio_worker_session_phase", **MAIN, phase="welcomed") == 1
            assert value(after_job, "studio_worker_ready") == 1
            assert value(after_job, "studio_worker_jobs_total", **MAIN, outcome="done") == 1
            assert value(after_job, "studio_worker_slot_jobs_total", **SLOT) == 1
            hist = {"kind": "llm", "engine": "synthetic"}
            assert value(after_job, "studio_worker_job_duration_seconds_count", **MAIN, **hist) == 1
            assert value(after_job, "studio_worker_job_duration_seconds_sum", **MAIN, **hist) > 0
            assert value(
                after_job, "studio_worker_job_duration_seconds_bucket", **MAIN, **hist, le="+Inf"
            )
            assert 0 <= value(after_job, "studio_worker_heartbeat_ack_age_seconds", **MAIN) < 10
            assert value(after_job, "studio_worker_jobs_running", **MAIN) == 0

            # A crash mid-job: a restart by cause `exit`, a retryable failure.
            await conn.send(offer("job-crash", image_task(), model="synthetic-crash"))
            await conn.expect(studio.Accept)
            assert (await conn.expect(studio.Fail)).retryable is True
            after_crash = await scrape(client)
            assert value(after_crash, "studio_worker_engine_restarts_total", **SLOT, cause="exit")
            assert (
                value(after_crash, "studio_worker_jobs_total", **MAIN, outcome="failed_retryable")
                == 1
            )
            assert (
                value(after_crash, "studio_worker_jobs_total", **MAIN, outcome="failed_final") == 0
            )
            image = {"kind": "image", "engine": "synthetic"}
            assert (
                value(after_crash, "studio_worker_job_duration_seconds_count", **MAIN, **image) == 1
            )
            assert await run.sup.pool.slots[0].wait_ready(10)
            back = await scrape(client)
            assert value(back, "studio_worker_slot_state", **SLOT, state="ready") == 1
            assert value(back, "studio_worker_model_load_seconds_count", **SLOT) == 0
            assert value(back, "studio_worker_download_bytes_total", **SLOT) == 0

            # A dropped session counts a reconnect, and readiness follows the session.
            await conn.close(1000, "")
            again = await peer.next_connection()
            await again.expect(studio.Hello)
            assert (await client.get("/readyz")).status_code == 503
            await again.send(studio.Welcome(worker_id="w-1", server_time="now"))
            await again.expect(studio.Heartbeat)
            final = await scrape(client)
            assert value(final, "studio_worker_session_reconnects_total", **MAIN) == 1
            assert value(final, "studio_worker_sessions_welcomed_total", **MAIN) == 2


async def test_busy_and_paused_rejects_are_counted(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, faults="slow-job=1.0", metrics_listen="127.0.0.1:0"
        ) as run,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        await conn.send(offer("job-slow", image_task(), model="synthetic-slow"))
        await conn.expect(studio.Accept)
        await conn.send(offer("job-2", image_task()))
        assert (await conn.expect(studio.Reject)).code == "busy"
        async with client_for(run) as client:
            samples = await scrape(client)
            assert value(samples, "studio_worker_jobs_total", **MAIN, outcome="rejected_busy") == 1
            assert value(samples, "studio_worker_jobs_running", **MAIN) == 1
            assert value(samples, "studio_worker_slot_state", **SLOT, state="busy") == 1
            run.sup.lanes[0].state.paused = True
            await conn.send(offer("job-3", image_task()))
            assert (await conn.expect(studio.Reject)).code == "paused"
            samples = await scrape(client)
            assert (
                value(samples, "studio_worker_jobs_total", **MAIN, outcome="rejected_paused") == 1
            )
            assert value(samples, "studio_worker_paused", **MAIN) == 1


async def test_http_surface_refuses_what_it_does_not_serve(tmp_path):
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
    ):
        await peer.next_connection()
        async with client_for(run) as client:
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/metrics")).status_code == 405
            head = await client.head("/healthz")
            assert head.status_code == 200 and head.content == b""
            assert (await client.get("/metrics?name[]=x")).status_code == 200
        # Garbage and oversized requests cost their own connection only.
        assert run.sup.metrics is not None
        host, port = run.sup.metrics.address or ("", 0)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"NONSENSE\r\n\r\n")
            assert (await stream.receive()).startswith(b"HTTP/1.1 400 ")
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET /" + b"x" * 9000)
            assert (await stream.receive()).startswith(b"HTTP/1.1 400 ")  # head over 8 KiB
        async with client_for(run) as client:
            assert (await client.get("/healthz")).status_code == 200


async def test_a_taken_port_is_a_startup_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "config.toml"
        write_config(path, "http://127.0.0.1:9/")
        sup = Supervisor(
            StartOptions(config_path=path, metrics_listen=f"127.0.0.1:{port}", timings=FAST)
        )
        with pytest.raises(MetricsListenError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await sup.run()
        assert not sup.pool.run_dir.exists()


def test_metrics_are_off_by_default(tmp_path: Path):
    assert StartOptions(config_path=tmp_path / "config.toml").metrics_listen is None
    assert WorkerConfig().metrics_listen is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:http", "host:70000", ""])
def test_parse_listen_refuses(text):
    with pytest.raises(MetricsListenError, match="metrics listen address"):
        parse_listen(text)


def test_bad_listen_address_fails_before_anything_starts(tmp_path: Path):
    path = tmp_path / "config.toml"
    write_config(path, "http://127.0.0.1:9/", metrics_listen="nonsense")
    with pytest.raises(MetricsListenError, match="expected HOST:PORT"):
        Supervisor(StartOptions(config_path=path))


def test_duration_histogram_is_cumulative():
    hist = DurationHistogram((1, 5))
    for v in (0.5, 1.0, 3.0, 10.0):
        hist.observe(v)
    assert hist.cumulative() == [(1.0, 2), (5.0, 3), (float("inf"), 4)]
    assert (hist.count, hist.sum) == (4, 14.5)


def test_progress_stats_count_download_growth_and_time_loads():
    stats = ProgressStats()
    for step in (100, 100, 250, 250):
        stats.observe(ipc.Progress("j1", "downloading", step, 250, "model.gguf"), 0.0)
    stats.observe(ipc.Progress("j1", "downloading", 50, 50, "vae.gguf"), 0.0)
    assert stats.download_bytes == 300
    stats.observe(ipc.Progress("j1", "loading", 0, 1, "model.gguf"), 10.0)
    stats.observe(ipc.Progress("j1", "loading", 1, 1, "model.gguf"), 12.5)
    assert (stats.load_seconds.count, stats.load_seconds.sum) == (1, 2.5)
    # A load that never finishes (host lost) is not paired with the next job's.
    stats.observe(ipc.Progress("j2", "loading", 0, 1, "model.gguf"), 20.0)
    stats.observe(ipc.Progress("j3", "loading", 1, 1, "model.gguf"), 99.0)
    assert stats.load_seconds.count == 1
    # The same file in another job is a new download.
    stats.observe(ipc.Progress("j4", "downloading", 250, 250, "model.gguf"), 0.0)
    assert stats.download_bytes == 550


async def test_job_durations_are_recorded_per_kind_and_engine_and_kept():
    state = WorkerState()
    state.jobs["j1"] = ActiveJob("j1", "image", "m", "sdcpp", "sdcpp-gpu0-0")
    state.nudge()  # capability changes must not touch the history
    state.finish_job("j1")
    state.finish_job("j1")  # a second end of the same job is not a second job
    state.nudge()
    assert list(state.job_seconds) == [("image", "sdcpp")]
    assert state.job_seconds["image", "sdcpp"].count == 1
    assert "j1" not in state.jobs
