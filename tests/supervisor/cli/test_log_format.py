"""`supervisor start --log-format json --metrics 127.0.0.1:0` as a real process against a
studio peer: every stderr line is one JSON object, job lines carry the job id, supervisor
lines carry their key=value fields, and the metrics endpoint of the real CLI answers."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import studio
from supervisor.cli.logging_setup import JsonFormatter
from tests.supervisor.studio.test_session import llm_task, offer
from tests.support.studio_peer import running_peer
from tests.support.supervisor_harness import TOKEN, write_config

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")


class StderrLines:
    """Collects a process's stderr lines; ``wait_for`` returns the first matching one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._grew = anyio.Event()

    async def pump(self, stream: anyio.abc.ByteReceiveStream) -> None:
        buf = b""
        async for chunk in stream:
            buf += chunk
            *complete, buf = buf.split(b"\n")
            self.lines.extend(line.decode() for line in complete)
            self._grew.set()
            self._grew = anyio.Event()
        if buf:
            self.lines.append(buf.decode())
        self._grew.set()

    async def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 30) -> Any:
        seen = 0
        with anyio.fail_after(timeout_s):
            while True:
                for line in self.lines[seen:]:
                    entry = json.loads(line)
                    if match(entry):
                        return entry
                seen = len(self.lines)
                await self._grew.wait()


def message_starts(prefix: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: str(e["message"]).startswith(prefix)


async def test_json_logs_end_to_end_with_metrics(tmp_path: Path):
    config = tmp_path / "config.toml"
    async with running_peer() as peer:
        write_config(config, peer.base_url)
        argv = [*CLI, "--config", str(config), "start", "--engines", "synthetic"]
        argv += ["--log-format", "json", "--metrics", "127.0.0.1:0"]
        proc = await anyio.open_process(argv, stdout=subprocess.DEVNULL)
        stderr = StderrLines()
        try:
            async with anyio.create_task_group() as tg:
                assert proc.stderr is not None
                tg.start_soon(stderr.pump, proc.stderr)
                listening = await stderr.wait_for(message_starts("metrics listening on "))
                url = listening["message"].split(" ")[3]
                conn = await peer.next_connection(timeout_s=30)
                await conn.handshake()
                await conn.send(offer("job-json", llm_task()))
                await conn.expect(studio.Accept)
                assert (await conn.expect(studio.CompleteJson)).job_id == "job-json"
                await stderr.wait_for(message_starts("json result sent job job-json"))
                async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                    assert (await client.get("/readyz")).status_code == 200
                    text = (await client.get("/metrics")).text
                done = [
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "studio_worker_jobs_total"
                    and s.labels == {"lane": "main", "outcome": "done"}
                ]
                assert done == [1.0]
                proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    assert await proc.wait() == 0
                tg.cancel_scope.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()
                with anyio.CancelScope(shield=True):
                    await proc.wait()
            await proc.aclose()

    entries = [json.loads(line) for line in stderr.lines if line]
    assert entries, "no log lines"
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert TS.match(entry["ts"]), entry["ts"]
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        assert TOKEN not in json.dumps(entry)
    job_lines = [e for e in entries if e.get("job_id") == "job-json"]
    starts = [e["message"] for e in job_lines]
    for prefix in ("offer received job-json", "dispatching job job-json", "json result sent"):
        assert any(m.startswith(prefix) for m in starts), (prefix, starts)
    dispatch = next(m for m in starts if m.startswith("dispatching job"))
    assert "engine=synthetic" in dispatch and "slot=synthetic-default-0" in dispatch
    ready = next(e["message"] for e in entries if e["message"].startswith("engine host ready"))
    assert re.search(r"engine=synthetic slot=synthetic-default-0 pid=\d+ elapsed_ms=\d+", ready)
    spawned = next(e for e in entries if e["message"].startswith("spawned engine host"))
    assert spawned["logger"] == "supervisor.host"
    assert re.search(r"engine=synthetic slot=\S+ pid=\d+", spawned["message"])
    assert "elapsed_ms=" in next(m for m in starts if m.startswith("json result sent"))
    last = entries[-1]
    assert last["logger"] == "supervisor.runtime"
    assert last["message"].startswith("supervisor stopped: reason=SIGTERM received exit_code=0")
    assert "jobs_done=1" in last["message"]


def test_json_formatter_carries_job_id_and_exceptions():
    record = logging.LogRecord("supervisor.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    record.job_id = "job-9"
    entry = json.loads(JsonFormatter().format(record))
    assert entry == {
        "ts": entry["ts"],
        "level": "warning",
        "logger": "supervisor.x",
        "message": "a b",
        "job_id": "job-9",
    }
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "supervisor.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exc"]
    assert "job_id" not in entry
