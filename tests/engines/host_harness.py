"""One real engine host (``python -m engines``) against a ZeroMQ ROUTER the test owns.

The test plays the supervisor: it binds the ROUTER on ``ipc://`` in a private short
directory (ipc paths are limited to ~100 characters), spawns the host with the arguments and
environment it needs, waits for ``Ready`` and then sends and receives typed messages.
Heartbeats, progress and log lines are skipped unless asked for; every wait has a deadline.
On the way out the host is shut down (killed if it will not go), its exit awaited, the
socket closed with ``linger=0`` and the context terminated, so nothing leaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import zmq

from engines.__main__ import TOKEN_ENV
from protocol import ipc

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0
NOISE = (ipc.HostHeartbeat, ipc.Progress, ipc.HostLog)
M = TypeVar("M", bound=ipc.HostMessage)


@dataclass
class HostUnderTest:
    proc: subprocess.Popen[bytes]
    router: zmq.Socket[bytes]
    identity: bytes
    log_path: Path
    ready: ipc.Ready | None = None
    # The host reports what it keeps loaded only when that changed: the latest report.
    last_resident: ipc.Resident = dataclasses.field(default_factory=lambda: ipc.Resident([]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, msg: ipc.SupervisorMessage) -> None:
        self.router.send_multipart([self.identity, ipc.encode(msg)])

    def receive(self, timeout_s: float = WAIT_S) -> ipc.HostMessage:
        """The next message, whatever it is; fails after ``timeout_s``."""
        if not self.router.poll(int(timeout_s * 1000)):
            raise AssertionError(f"no message from the host in {timeout_s} s; log:\n{self.log()}")
        identity, header, *_payload = self.router.recv_multipart()
        assert identity == self.identity
        msg = ipc.decode_host(header)
        if isinstance(msg, ipc.Resident):
            self.last_resident = msg
        return msg

    def next(self, timeout_s: float = WAIT_S) -> ipc.HostMessage:
        """The next message that is not a heartbeat, progress or log line."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.receive(max(0.0, deadline - time.monotonic()))
            if not isinstance(msg, NOISE):
                return msg

    def expect(self, kind: type[M], timeout_s: float = WAIT_S) -> M:
        msg = self.next(timeout_s)
        assert isinstance(msg, kind), f"expected {kind.__name__}, got {msg!r}"
        return msg

    def until(self, kind: type[M], timeout_s: float = WAIT_S) -> tuple[list[ipc.HostMessage], M]:
        """Every non-noise message up to and including the first ``kind``."""
        seen: list[ipc.HostMessage] = []
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.next(max(0.0, deadline - time.monotonic()))
            if isinstance(msg, kind):
                return seen, msg
            seen.append(msg)


@contextlib.contextmanager
def running_host(
    tmp_path: Path,
    *args: str,
    engine: str = "synthetic",
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
) -> Iterator[HostUnderTest]:
    """A started host of ``engine`` with extra command-line ``args`` and environment."""
    run_dir = Path(tempfile.mkdtemp(prefix="sw-host-"))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{run_dir / 'h.sock'}"
    router.bind(endpoint)
    child_env = dict(os.environ) | dict(env or {})
    child_env |= {TOKEN_ENV: "test-token", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "engines", "--engine", engine, "--slot", "slot-1"]
    argv += ["--endpoint", endpoint, "--models-root", str(tmp_path / "models")]
    argv += ["--parent-pid", str(os.getpid()), "--heartbeat-s", "0.5", *args]
    log_path = tmp_path / f"host-{len(list(tmp_path.glob('host-*.log')))}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    host = HostUnderTest(proc, router, b"slot-1", log_path)
    try:
        if wait_ready:
            host.ready = host.expect(ipc.Ready)
        yield host
    finally:
        if proc.poll() is None:
            with contextlib.suppress(zmq.ZMQError):
                host.send(ipc.Shutdown(grace_s=0.0))
            try:
                proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT_S)
        router.close(linger=0)
        context.term()
        shutil.rmtree(run_dir, ignore_errors=True)
