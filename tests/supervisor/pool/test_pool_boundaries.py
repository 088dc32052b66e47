"""The pool's edges: garbage and impostors on its ZeroMQ socket, and a supervisor that dies.

Garbage from a peer is logged and refused and never crashes the supervisor; a host never
outlives its supervisor, even one killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import psutil
import pytest
import zmq

from protocol import ipc
from supervisor.pool.ipc_router import IpcRouter
from supervisor.pool.slot_state import SlotState
from tests.support.pool_harness import run_job, running_pool, succeeded

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[3]
ORPHAN_EXIT_S = 2.0


@contextlib.contextmanager
def dealer(endpoint: str, identity: str) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER of our own on the pool's socket; closed (linger 0) with its context."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def heartbeat() -> ipc.HostHeartbeat:
    return ipc.HostHeartbeat("idle", None, 1, None, 0, 0, 0)


GARBAGE: list[list[bytes]] = [
    [b"\xc1 is never valid msgpack"],
    [msgspec.msgpack.encode({"t": "hb", "unexpected": 1})],
    [ipc.encode(ipc.Shutdown(1.0))],  # a supervisor message, not a host message
    [b"a", b"b", b"c", b"d"],  # no message has four frames
]


async def test_router_refuses_garbage_and_delivers_what_follows(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "supervisor.ipc")
    router = IpcRouter(tmp_path)
    async with anyio.create_task_group() as tg:
        await tg.start(router.serve)
        with router.open_inbox("slot.1") as inbox, dealer(router.endpoint, "slot.1") as sock:
            for frames in GARBAGE:
                sock.send_multipart(frames)
            sock.send(ipc.encode(heartbeat()))
            with anyio.fail_after(5):
                first = await inbox.receive()
        assert first.message == heartbeat()
        assert first.payload is None
        tg.cancel_scope.cancel()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == len(GARBAGE)


async def test_garbage_from_strangers_and_identity_thieves_never_disturbs_a_slot(tmp_path):
    async with running_pool(tmp_path) as run:
        await run.ready()
        slot = run.slot
        pid = slot.pid
        endpoint = run.pool.router.endpoint
        # A live identity is already taken, so ZeroMQ turns the thief away; a stranger's
        # identity has no inbox. Neither may reach, or upset, the slot.
        for identity in (f"{slot.slot_id}.{slot.generation}", "stranger.1"):
            with dealer(endpoint, identity) as sock:
                for frames in [*GARBAGE, [ipc.encode(ipc.JobFailed("x", "no", False, "x"))]]:
                    sock.send_multipart(frames)
        succeeded(await run.run_one(run_job("after-garbage")))
        assert slot.pid == pid
        assert slot.restarts == 0
        assert slot.state is SlotState.READY


async def test_impostor_with_a_wrong_token_is_refused_and_the_slot_recovers(tmp_path):
    # slow-start keeps the real host from connecting for a second, so the impostor is
    # first to claim the generation's identity and send its Ready.
    async with running_pool(tmp_path, faults="slow-start=1") as run:
        slot = run.slot
        await run.wait_until(lambda: slot.state is SlotState.STARTING, 5.0, "a host spawned")
        identity = f"{slot.slot_id}.{slot.generation}"
        forged = ipc.Ready(
            ipc.IPC_VERSION,
            "not-the-token",
            "synthetic",
            identity,
            1,
            {},
            {},
            ipc.ComputeDevice("cpu"),
        )
        with dealer(run.pool.router.endpoint, identity) as sock:
            sock.send(b"\xc1 garbage first")
            sock.send(ipc.encode(forged))
            await run.wait_until(lambda: slot.restarts == 1, 5.0, "the impostor refused")
        assert slot.restart_causes == {"handshake": 1}
        assert slot.ready_info is None or slot.ready_info.token != "not-the-token"
        await run.wait_until(lambda: slot.state is SlotState.READY, 10.0, "a genuine host")
        assert slot.ready_info is not None and slot.ready_info.pid == slot.pid
        succeeded(await run.run_one(run_job("after-impostor")))


SUPERVISOR_SCRIPT = """
import sys
from pathlib import Path

import anyio

from supervisor.pool.engine_pool import EnginePool
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_spec import parse_engines


async def main() -> None:
    settings = PoolSettings(models_root=Path(sys.argv[1]), heartbeat_s=0.1)
    pool = EnginePool(parse_engines("synthetic"), settings)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.serve)
        if not await pool.wait_ready(30):
            sys.exit("pool never became ready")
        print(pool.slots[0].pid, flush=True)
        await anyio.sleep_forever()


anyio.run(main)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_host_exits_when_its_supervisor_is_killed(tmp_path):
    script = tmp_path / "supervisor_main.py"
    script.write_text(textwrap.dedent(SUPERVISOR_SCRIPT))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "TMPDIR": str(tmp_path),  # the killed supervisor cannot remove its run dir
    }
    argv = [sys.executable, str(script), str(tmp_path / "models")]
    host_pid: int | None = None
    async with await anyio.open_process(
        argv, cwd=REPO_ROOT, env=env, stderr=subprocess.DEVNULL
    ) as supervisor:
        try:
            assert supervisor.stdout is not None
            line = b""
            with anyio.fail_after(30):
                while not line.endswith(b"\n"):
                    line += await supervisor.stdout.receive()
            host_pid = int(line)
            host = psutil.Process(host_pid)
            assert host.ppid() == supervisor.pid
            killed_at = time.monotonic()
            supervisor.send_signal(signal.SIGKILL)
            with anyio.fail_after(ORPHAN_EXIT_S):
                while not gone(host_pid):
                    await anyio.sleep(0.01)
            exited_after = time.monotonic() - killed_at
            assert await supervisor.wait() == -signal.SIGKILL
        finally:
            if supervisor.returncode is None:
                supervisor.kill()
            if host_pid is not None and not gone(host_pid):
                os.kill(host_pid, signal.SIGKILL)
    assert exited_after < ORPHAN_EXIT_S
