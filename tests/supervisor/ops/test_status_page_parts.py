"""The status page's pure parts, without a supervisor: the Host and Origin rules, the
finished-jobs history and its per-minute series, the log ring, the secret mask, and how a
job's end reaches the history through ``WorkerState``."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from supervisor.config import LaneIdentity, WorkerConfig, save_config
from supervisor.job_history import (
    CHART_MINUTES,
    HISTORY_JOBS,
    FinishedJob,
    JobHistory,
    merged_minutes,
)
from supervisor.ops.web.actions import ActionSecret
from supervisor.ops.web.host_guard import HostGuard, HostRule, host_name, same_origin_write
from supervisor.ops.web.log_ring import LogRing
from supervisor.ops.web.secret_mask import MASK, SecretMask
from supervisor.worker_state import ActiveJob, WorkerState


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9464", "127.0.0.1"),
        ("LocalHost:80", "localhost"),
        ("[::1]:9464", "::1"),
        ("::1", "::1"),
        ("example.test.", "example.test"),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("listen", "bound", "header", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:9464", True),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:8080", True),  # an SSH tunnel's other port
        ("127.0.0.1", "127.0.0.1", "localhost:8080", True),
        ("127.0.0.1", "127.0.0.1", "[::1]:9464", True),
        ("127.0.0.1", "127.0.0.1", "rebind.example:9464", False),  # DNS rebinding
        ("127.0.0.1", "127.0.0.1", "10.0.0.5:9464", False),
        ("127.0.0.1", "127.0.0.1", None, False),
        ("127.0.0.1", "127.0.0.1", "", False),
        ("localhost", "::1", "localhost:9464", True),
        ("localhost", "::1", "127.0.0.1:9464", True),
        ("localhost", "::1", "evil.example", False),
        ("0.0.0.0", "0.0.0.0", "192.168.1.20:9464", True),  # every interface: any IP
        ("0.0.0.0", "0.0.0.0", "gpu-box.lan:9464", False),
        ("::", "::", "[fd00::1]:9464", True),
        ("gpu-box.lan", "192.168.1.20", "gpu-box.lan:9464", True),  # the name it was given
        ("gpu-box.lan", "192.168.1.20", "192.168.1.20:9464", True),
        ("gpu-box.lan", "192.168.1.20", "localhost:9464", False),
    ],
)
def test_host_rule(listen: str, bound: str, header: str | None, allowed: bool) -> None:
    assert HostRule(listen, bound).allows(header) is allowed


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"host": "127.0.0.1:9464"}, True),  # curl: no Origin
        ({"host": "127.0.0.1:9464", "origin": "http://127.0.0.1:9464"}, True),
        ({"host": "127.0.0.1:9464", "origin": "http://evil.example"}, False),
        ({"host": "127.0.0.1:9464", "origin": "null"}, False),
        ({"host": "127.0.0.1:9464", "origin": "https://127.0.0.1:9464"}, False),
        ({"host": "127.0.0.1:9464", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:9464", "sec-fetch-site": "cross-site"}, False),
        ({"host": "127.0.0.1:9464", "sec-fetch-site": "same-site"}, False),
    ],
)
def test_same_origin_write(headers: dict[str, str], allowed: bool) -> None:
    assert same_origin_write(Headers(headers)) is allowed


@pytest.mark.anyio
async def test_host_guard_leaves_the_metrics_endpoints_to_any_host() -> None:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    routes = [Route(p, ok, methods=["GET", "POST"]) for p in ("/", "/metrics", "/api/x")]
    app = Starlette(
        routes=routes, middleware=[Middleware(HostGuard, rule=HostRule("127.0.0.1", "127.0.0.1"))]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:9464") as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/metrics", headers={"host": "prom.lan"})).status_code == 200
        refused = await client.get("/", headers={"host": "evil.example:9464"})
        assert refused.status_code == 403
        assert "is not the address this page is served at" in refused.text
        cross = await client.post("/api/x", headers={"origin": "http://evil.example"})
        assert (cross.status_code, cross.text) == (403, "refused: a write from another origin\n")
        same = await client.post("/api/x", headers={"origin": "http://127.0.0.1:9464"})
        assert same.status_code == 200


def finished(n: int, at: float, outcome: str = "done", seconds: float = 2.0) -> FinishedJob:
    return FinishedJob(f"job-{n}", "image", "m", "synthetic", "s0", outcome, seconds, at)


def test_history_keeps_the_last_jobs_newest_first() -> None:
    history = JobHistory()
    for n in range(HISTORY_JOBS + 7):
        history.record(finished(n, 1000.0 + n))
    recent = history.recent()
    assert len(recent) == HISTORY_JOBS
    assert recent[0].job_id == f"job-{HISTORY_JOBS + 6}"
    assert recent[-1].job_id == "job-7"


def test_per_minute_series_is_an_hour_of_minutes_with_the_empty_ones() -> None:
    history = JobHistory()
    t0 = 60.0 * 1000  # minute 1000
    history.record(finished(1, t0 + 5, seconds=4.0))
    history.record(finished(2, t0 + 50, "failed_retryable", seconds=10.0))
    history.record(finished(3, t0 + 125, seconds=1.0))  # minute 1002
    history.record(finished(4, t0 + 100, seconds=3.0))  # the clock stepped back: minute 1002
    series = history.per_minute(now=t0 + 130)
    assert len(series) == CHART_MINUTES
    assert [m.minute for m in series][-3:] == [1000, 1001, 1002]
    first, empty, last = series[-3:]
    assert (first.jobs, first.failed, first.seconds_sum, first.seconds_max) == (2, 1, 14.0, 10.0)
    assert (empty.jobs, empty.seconds_sum) == (0, 0.0)
    assert (last.jobs, last.seconds_sum, last.seconds_max) == (2, 4.0, 3.0)
    # An hour later the old minutes are out of the window.
    assert sum(m.jobs for m in history.per_minute(now=t0 + 3600 + 130)) == 0
    # The caller's copy is its own.
    series[-1].jobs = 99
    assert history.per_minute(now=t0 + 130)[-1].jobs == 2


def test_per_minute_storage_is_bounded() -> None:
    history = JobHistory()
    for minute in range(500):
        history.record(finished(minute, minute * 60.0))
    assert len(history._minutes) == CHART_MINUTES


def test_merged_minutes_adds_lanes() -> None:
    a, b = JobHistory(), JobHistory()
    a.record(finished(1, 600.0, seconds=2.0))
    b.record(finished(2, 610.0, seconds=5.0))
    merged = merged_minutes([a.per_minute(620.0), b.per_minute(620.0)])
    assert (merged[-1].jobs, merged[-1].seconds_sum, merged[-1].seconds_max) == (2, 7.0, 5.0)
    assert merged_minutes([]) == []


def test_worker_state_writes_each_ended_job_into_the_history() -> None:
    state = WorkerState()
    state.jobs["j1"] = ActiveJob("j1", "image", "m1", "synthetic", "s0", prompt_preview="fox")
    state.count_outcome("j1", "failed_retryable", "exit")
    state.finish_job("j1")
    state.jobs["j2"] = ActiveJob("j2", "llm", "m2", "synthetic", "s0")
    state.finish_job("j2")  # the session ended under it: nobody counted an outcome
    state.count_outcome("gone", "done")  # counted, though no longer running
    j2, j1 = state.history.recent()
    assert (j1.job_id, j1.outcome, j1.cause, j1.slot, j1.model) == (
        "j1",
        "failed_retryable",
        "exit",
        "s0",
        "m1",
    )
    assert (j2.outcome, j2.cause) == ("cancelled", None)
    assert state.job_outcomes == {"failed_retryable": 1, "done": 1}
    assert state.job_failures == {"exit": 1}
    assert j1.duration_s >= 0 and j1.finished_at > 0


def test_log_ring_is_bounded_numbered_and_filtered() -> None:
    ring = LogRing(capacity=3)
    logger = logging.getLogger("tests.status_page.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.debug("one")
        logger.info("two %s", "args", extra={"job_id": "job-7", "lane": "gpu1"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("three")
        logger.warning("four")
    finally:
        logger.removeHandler(ring)
    lines = ring.since(0)
    assert [line.seq for line in lines] == [2, 3, 4]  # the first fell out
    two = lines[0]
    assert (two.message, two.level, two.job_id, two.lane) == ("two args", "info", "job-7", "gpu1")
    assert lines[1].message == "three (ValueError: boom)"  # no traceback
    assert [line.message for line in ring.since(3)] == ["four"]
    assert [line.seq for line in ring.since(0, logging.WARNING)] == [3, 4]


def test_secret_mask_hides_config_secrets_and_the_action_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    save_config(
        path,
        WorkerConfig(
            auth_token="tok-top-secret-1",
            registration_secret="reg-secret-22",
            lane={"gpu1": LaneIdentity(auth_token="tok-lane-secret-3")},
        ),
    )
    mask = SecretMask(path, lambda: "action-secret-44")
    body = b"tok-top-secret-1 reg-secret-22 tok-lane-secret-3 action-secret-44 fine"
    assert mask.scrub(body) == b" ".join([MASK] * 4) + b" fine"
    # A token saved later (approval) is masked from the next answer on.
    save_config(path, WorkerConfig(auth_token="tok-newer-secret-5"))
    assert mask.scrub(b"tok-newer-secret-5 tok-top-secret-1") == MASK + b" " + MASK
    # Without a config, the action secret alone.
    assert SecretMask(None, lambda: None).scrub(b"tok-newer-secret-5") == b"tok-newer-secret-5"


def test_action_secret_file_is_private_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.secret"
    path.write_text("left by a crash\n")
    path.chmod(0o644)
    secret = ActionSecret(path)
    secret.write()
    assert secret.value and path.read_text() == secret.value + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert secret.matches(secret.value) and secret.matches(f" {secret.value}\n")
    assert not secret.matches("wrong") and not secret.matches(None) and not secret.matches("")
    secret.remove()
    assert not path.exists() and not secret.matches("wrong")
    assert list(tmp_path.iterdir()) == []  # no staged file left beside it
