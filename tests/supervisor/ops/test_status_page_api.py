"""The status page's HTTP API for real: the in-process supervisor (synthetic engine hosts as
real subprocesses) against a scripted studio peer, asked over HTTP with httpx: the state
JSON through a job's progress into the history, the log lines, the actions behind the
secret, the Host and Origin guards, and that no secret ever leaves in an answer."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest

from protocol import studio
from supervisor.config import load_config
from supervisor.ops.control import set_paused, socket_path
from supervisor.ops.web.actions import SECRET_HEADER, secret_path
from supervisor.worker_state import WorkerState
from tests.supervisor.studio.test_session import image_task, llm_task, offer
from tests.support.studio_peer import running_peer
from tests.support.supervisor_harness import TOKEN, RunningSupervisor, running_supervisor

pytestmark = pytest.mark.anyio

T = TypeVar("T")
LONG_PROMPT = "a red fox in deep snow, " * 20  # over the 200-character preview
SLOT = "synthetic-default-0"


@contextlib.asynccontextmanager
async def page_client(run: RunningSupervisor) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the page once it listens (the session starts after it does, so a test
    that has seen the worker connect may ask at once)."""
    with anyio.fail_after(15):
        while run.sup.metrics is None or run.sup.metrics.address is None:
            await anyio.sleep(0.02)
    async with httpx.AsyncClient(base_url=run.sup.metrics.url, timeout=5.0) as client:
        yield client


def action_secret(run: RunningSupervisor) -> str:
    return secret_path(socket_path(run.config_path)).read_text().strip()


async def poll_state(
    client: httpx.AsyncClient, probe: Callable[[dict[str, Any]], T | None], what: str
) -> T:
    """Ask /api/state until ``probe`` finds what it looks for (bounded polling: nothing
    announces a page update)."""
    with anyio.fail_after(15):
        while True:
            response = await client.get("/api/state")
            assert response.status_code == 200, response.text
            found = probe(response.json())
            if found is not None:
                return found
            await anyio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


def job_in(key: str, job_id: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    return lambda state: next((j for j in state[key] if j["job_id"] == job_id), None)


async def test_state_follows_a_job_from_progress_to_history(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(
            tmp_path, peer.base_url, faults="slow-job=1.0", metrics_listen="127.0.0.1:0"
        ) as run,
        page_client(run) as client,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        state = (await client.get("/api/state")).json()
        (lane,) = state["status"]["lanes"]
        assert (lane["name"], lane["slots"]) == ("main", [SLOT])
        assert state["lanes"] == [
            {"name": "main", "reconnect_attempt": None, "vram_threshold_gb": 12.0}
        ]
        assert state["actions"] is True
        assert state["secret_file"] == str(secret_path(socket_path(run.config_path)))
        assert [s["slot"] for s in state["status"]["slots"]] == [SLOT]
        assert len(state["minutes"]) == 60 and state["history"] == []

        await conn.send(offer("job-slow", image_task(LONG_PROMPT), model="synthetic-slow"))
        await conn.expect(studio.Accept)
        moving = await poll_state(
            client,
            lambda s: next((j for j in s["jobs"] if j["step"] > 0), None),
            "progress of job-slow",
        )
        assert (moving["job_id"], moving["phase"], moving["unit"]) == (
            "job-slow",
            "generating",
            "steps",
        )
        assert 0 < moving["step"] <= moving["total"]
        assert (moving["slot"], moving["model"], moving["lane"]) == (SLOT, "synthetic-slow", "main")
        assert moving["prompt_preview"] == LONG_PROMPT[:200] + "…"
        further = await poll_state(
            client,
            lambda s: next((j for j in s["jobs"] if j["step"] > moving["step"]), None),
            "more progress",
        )
        assert further["job_id"] == "job-slow"

        done = await poll_state(client, job_in("history", "job-slow"), "job-slow in the history")
        assert done["outcome"] == "done" and done["cause"] is None
        assert (done["slot"], done["model"], done["kind"], done["lane"]) == (
            SLOT,
            "synthetic-slow",
            "image",
            "main",
        )
        assert done["duration_s"] >= 1.0
        state = (await client.get("/api/state")).json()
        assert state["jobs"] == []
        assert sum(m["jobs"] for m in state["minutes"]) == 1
        assert LONG_PROMPT[:40] not in str(state["history"])  # the history keeps no prompt

        await conn.send(offer("job-crash", llm_task(), model="synthetic-crash"))
        await conn.expect(studio.Accept)
        assert (await conn.expect(studio.Fail)).retryable is True
        crashed = await poll_state(client, job_in("history", "job-crash"), "job-crash")
        assert crashed["outcome"] == "failed_retryable"
        status = (await client.get("/api/state")).json()["status"]
        assert status["job_failures"] == {crashed["cause"]: 1}
        assert status["slots"][0]["restart_causes"].get("exit") == 1
        history = (await client.get("/api/state")).json()["history"]
        assert [j["job_id"] for j in history] == ["job-crash", "job-slow"]  # newest first


async def test_a_lost_session_shows_its_reconnect_attempt(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
        page_client(run) as client,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        welcomed = await poll_state(
            client,
            lambda s: s if s["status"]["lanes"][0]["session"] == "welcomed" else None,
            "the lane welcomed",
        )
        assert welcomed["lanes"][0]["reconnect_attempt"] is None
        peer.upgrade_status = 503  # every reconnect fails from now on
        await conn.close(1012, "restarting")
        lane = await poll_state(
            client,
            lambda s: s["lanes"][0] if (s["lanes"][0]["reconnect_attempt"] or 0) >= 2 else None,
            "a second reconnect attempt",
        )
        assert lane["name"] == "main"
        status = (await client.get("/api/state")).json()["status"]["lanes"][0]
        assert status["session"] != "welcomed" and status["reconnects"] >= 2


async def test_logs_are_numbered_filtered_and_masked(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
        page_client(run) as client,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        secret = action_secret(run)
        leak = logging.getLogger("supervisor.test_leak")
        leak.warning("careless line token=%s secret=%s", TOKEN, secret)
        lines = (await client.get("/api/logs")).json()["lines"]
        assert lines and [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
        assert any(line["message"].startswith("metrics listening on") for line in lines)
        careless = next(line for line in lines if line["logger"] == "supervisor.test_leak")
        assert careless["message"] == "careless line token=[redacted] secret=[redacted]"
        assert careless["level"] == "warning"
        last = lines[-1]["seq"]
        assert (await client.get(f"/api/logs?after={last}")).json()["lines"] == []
        warnings = (await client.get("/api/logs?level=warning")).json()["lines"]
        assert warnings and {line["level"] for line in warnings} <= {"warning", "error", "critical"}
        assert (await client.get("/api/logs?level=loud")).status_code == 400
        assert (await client.get("/api/logs?after=x")).status_code == 400
        for path in ("/", "/static/app.js", "/api/state", "/api/logs", "/api/logs?level=debug"):
            body = (await client.get(path)).text
            assert TOKEN not in body and secret not in body, path


async def test_actions_need_the_secret_and_answer_like_the_cli(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
        page_client(run) as client,
    ):
        conn = await peer.next_connection()
        await conn.handshake()
        path = secret_path(socket_path(run.config_path))
        assert path.parent == socket_path(run.config_path).parent
        assert path.stat().st_mode & 0o777 == 0o600
        secret = action_secret(run)
        allowed = {SECRET_HEADER: secret}

        for headers in ({}, {SECRET_HEADER: "not-it"}):
            refused = await client.post("/api/actions/pause", headers=headers)
            assert refused.status_code == 403
            assert refused.json() == {
                "ok": False,
                "message": f"this needs the page's action secret (the file {path})",
            }
        assert run.sup.lanes[0].state.paused is False
        # The secret in a URL is no secret: it is never read from one.
        assert (await client.post(f"/api/actions/pause?secret={secret}")).status_code == 403
        foreign = {**allowed, "Origin": "http://evil.example"}
        assert (await client.post("/api/actions/pause", headers=foreign)).status_code == 403
        assert (await client.post("/api/actions/check", headers=allowed)).json()["ok"] is True

        paused = await client.post("/api/actions/pause", headers=allowed)
        cli_text = set_paused(WorkerState(), True)  # what `supervisor pause` prints
        assert paused.json() == {"ok": True, "message": cli_text}
        await conn.send(offer("job-1", llm_task()))
        assert (await conn.expect(studio.Reject)).code == "paused"
        again = await client.post("/api/actions/pause", headers=allowed)
        assert again.json() == {"ok": True, "message": "already paused"}
        lane = await client.post("/api/actions/resume", headers=allowed, json={"lane": "gpu7"})
        assert lane.status_code == 400
        assert lane.json()["message"] == (
            "the supervisor refused `resume`: no lane `gpu7` here; the lanes are main"
        )
        resumed = await client.post("/api/actions/resume", headers=allowed, json={"lane": "main"})
        assert resumed.json() == {"ok": True, "message": "resumed: accepting new offers again"}
        await conn.send(offer("job-2", llm_task()))
        await conn.expect(studio.Accept)

        threshold = await client.post("/api/actions/threshold", headers=allowed, json={"gb": 7.5})
        assert threshold.json() == {"ok": True, "message": "vram_threshold_gb = 7.5"}
        assert load_config(run.config_path).vram_threshold_gb == 7.5
        state = (await client.get("/api/state")).json()
        assert state["lanes"][0]["vram_threshold_gb"] == 7.5
        for body, text in (
            ({"gb": -1}, "threshold must be >= 0"),
            ({"gb": 3, "lane": "nope"}, "no lane `nope` here; the lanes are main"),
        ):
            bad = await client.post("/api/actions/threshold", headers=allowed, json=body)
            assert (bad.status_code, bad.json()["message"]) == (400, text)
        garbage = await client.post("/api/actions/threshold", headers=allowed, content=b"{nonsense")
        assert garbage.status_code == 400
        assert load_config(run.config_path).vram_threshold_gb == 7.5
    assert not path.exists()  # removed at exit


async def test_foreign_hosts_are_refused_but_metrics_answer_any(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
        page_client(run) as client,
    ):
        await peer.next_connection()
        secret = action_secret(run)
        evil = {"Host": "rebind.example:9464"}
        for path in ("/", "/static/app.js", "/api/state", "/api/logs"):
            refused = await client.get(path, headers=evil)
            assert refused.status_code == 403, path
            assert refused.text.startswith("refused: Host `rebind.example:9464` is not")
        write = await client.post("/api/actions/pause", headers={**evil, SECRET_HEADER: secret})
        assert write.status_code == 403
        assert run.sup.lanes[0].state.paused is False
        assert (await client.get("/metrics", headers=evil)).status_code == 200
        assert (await client.get("/healthz", headers=evil)).status_code == 200
        tunnel = await client.get("/api/state", headers={"Host": "localhost:8080"})
        assert tunnel.status_code == 200


async def test_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    async with (
        running_peer() as peer,
        running_supervisor(tmp_path, peer.base_url, metrics_listen="127.0.0.1:0") as run,
        page_client(run) as client,
    ):
        await peer.next_connection()
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        for path in ("/", "/static/app.js", "/static/charts.js", "/static/style.css"):
            text = (await client.get(path)).text
            # Only the SVG namespace is a URL, and it is a name, never fetched.
            assert text.replace("http://www.w3.org/2000/svg", "").count("://") == 0, path
        assert (await client.head("/")).content == b""
        assert (await client.post("/")).status_code == 405
        assert (await client.get("/api/actions/pause")).status_code == 405
