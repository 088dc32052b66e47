"""`supervisor start` as a real process: signals, the control socket, `status`."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest

from protocol import studio
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.ops.control import socket_path
from tests.support.studio_peer import running_peer
from tests.support.supervisor_harness import write_config

CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]


def start_process(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The supervisor with its log (stderr) in ``<config dir>/supervisor.log``."""
    with (config.parent / "supervisor.log").open("wb") as log:
        return subprocess.Popen(
            [*CLI, "--config", str(config), "start", "--engines", "synthetic", *extra],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config), *args], capture_output=True, text=True, timeout=30
    )


def children_of(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


async def wait_gone(pids: list[int], timeout_s: float = 10) -> None:
    with anyio.fail_after(timeout_s):
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
            await anyio.sleep(0.05)


def slow_offer(job_id: str) -> studio.Offer:
    return studio.Offer(
        claim=studio.JobOfferClaim(
            job_id=job_id,
            game_id="g",
            asset_name="a",
            model="synthetic-slow",
            vram_gb_estimate=1.0,
            task=LlmTask(messages=[ChatMessage("user", "hi")]),
            model_source=ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512)),
        )
    )


@pytest.mark.anyio
async def test_sigterm_drains_the_job_then_closes_1000_and_status_works(tmp_path):
    config = tmp_path / "config.toml"
    async with running_peer() as peer:
        write_config(config, peer.base_url)
        proc = start_process(config, "--faults", "slow-job=2")
        try:
            conn = await peer.next_connection(timeout_s=30)
            await conn.handshake()
            # The control socket is owner-only and `status` reads the live supervisor.
            sock = socket_path(config)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            out = (await anyio.to_thread.run_sync(run_cli, config, "status")).stdout
            assert "registration:       approved as w-1" in out
            assert "session:            welcomed as w-1" in out
            assert "synthetic-default-0" in out and "ready" in out
            hosts = children_of(proc.pid)
            assert hosts
            await conn.send(slow_offer("job-slow"))
            await conn.expect(studio.Accept)
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):  # draining shows as autoEnabled=false
                while (await conn.expect(studio.Heartbeat)).capabilities.auto_enabled:
                    pass
            await conn.send(slow_offer("job-late"))
            reject = await conn.expect(studio.Reject)
            assert (reject.job_id, reject.code) == ("job-late", "paused")
            assert (await conn.expect(studio.CompleteJson)).job_id == "job-slow"
            assert await conn.wait_closed() == 1000
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
            assert code == 0
            await wait_gone(hosts)
            stderr = (tmp_path / "supervisor.log").read_text()
            assert "supervisor stopped: reason=SIGTERM received" in stderr
            assert not sock.exists()
            out = (await anyio.to_thread.run_sync(run_cli, config, "status")).stdout
            assert "supervisor:         not running" in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.anyio
async def test_second_signal_forces_shutdown_without_orphans(tmp_path):
    config = tmp_path / "config.toml"
    async with running_peer() as peer:
        write_config(config, peer.base_url, drain_grace_s=60.0)
        proc = start_process(config, "--faults", "slow-job=60")
        try:
            conn = await peer.next_connection(timeout_s=30)
            await conn.handshake()
            hosts = children_of(proc.pid)
            await conn.send(slow_offer("job-forever"))
            await conn.expect(studio.Accept)
            proc.send_signal(signal.SIGINT)
            await conn.expect(studio.Heartbeat)  # still draining: the session is up
            proc.send_signal(signal.SIGINT)
            code = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
            assert code == 0
            await wait_gone(hosts)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_start_with_a_missing_backend_names_the_extra(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, "http://127.0.0.1:9/")
    env = dict(os.environ)
    # Hide llama_cpp from the child: a sitecustomize that blocks the import spec.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name == 'llama_cpp':\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Block)\n"
    )
    env["PYTHONPATH"] = f"{shim}{os.pathsep}{env.get('PYTHONPATH', '')}"
    result = subprocess.run(
        [*CLI, "--config", str(config), "start", "--engines", "llama"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2
    assert "pip install 'studio-worker[llama]'" in result.stderr


def test_start_refuses_a_bad_thread_override_before_spawning_hosts(tmp_path):
    config = tmp_path / "config.toml"
    write_config(config, "http://127.0.0.1:9/")
    result = subprocess.run(
        [*CLI, "--config", str(config), "start", "--engines", "synthetic"],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, STUDIO_WORKER_THREADS="0"),
    )
    assert result.returncode == 2
    assert "STUDIO_WORKER_THREADS must be a whole number from 1 to 1024, got '0'" in result.stderr
    assert "spawned engine host" not in result.stderr


@pytest.mark.anyio
async def test_a_config_too_deep_for_a_socket_address_still_answers_status(tmp_path):
    deep = tmp_path / ("a-directory-with-a-long-name-" * 3) / ("and-another-one-" * 3)
    deep.mkdir(parents=True)
    config = deep / "config.toml"
    sock = socket_path(config)
    assert sock.parent.name == f"studio-worker-{os.getuid()}"
    assert socket_path(config) == sock, "every command must find the same socket"
    async with running_peer() as peer:
        write_config(config, peer.base_url)
        proc = start_process(config)
        try:
            conn = await peer.next_connection(timeout_s=30)
            await conn.handshake()
            with anyio.fail_after(10):
                while not sock.is_socket():
                    await anyio.sleep(0.05)
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
            done = await anyio.to_thread.run_sync(run_cli, config, "status")
            assert done.returncode == 0, done.stderr
            assert "session:            welcomed as w-1" in done.stdout
            proc.send_signal(signal.SIGTERM)
            assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30)) == 0
            assert not sock.exists(), "the socket is removed on a clean stop"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
