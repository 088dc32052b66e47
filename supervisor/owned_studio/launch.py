"""Start and stop one local studio process (``python -m localstudio``) for ``start --local``.

The studio runs with auto-approval on 127.0.0.1, its data beside the config, in a session
of its own (a Ctrl-C meant for the supervisor must not stop it before the supervisor has
closed its studio session), and with ``--parent-pid`` so it dies with the supervisor,
``kill -9`` included. Its first stdout line says where it listens; its stderr goes to
``studio.log`` in its data dir (an unread pipe would fill up and freeze it). It refuses with
an exit status of its own (``localstudio/__main__.py``) which is turned into one
LocalStudioError that says what to do. This module starts, reads and stops one process; it
never restarts anything (``keeper`` does) and never imports ``localstudio``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import anyio
import psutil
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from supervisor.errors import LocalStudioError
from supervisor.pool.host_process import ExitInfo

log = logging.getLogger("supervisor.local")

READY_PREFIX: Final = "local studio listening on "
START_TIMEOUT_S: Final = 30.0
STOP_GRACE_S: Final = 10.0
LINE_MAX_BYTES: Final = 4096
LOG_NAME: Final = "studio.log"
# Exit statuses of `python -m localstudio` (localstudio/__main__.py; a test holds them equal).
EXIT_PORT_TAKEN: Final = 3
EXIT_DATA_DIR_BUSY: Final = 4


@dataclass(frozen=True)
class LocalStudioSpec:
    """What ``start --local`` asks of its studio."""

    port: int = 9790  # 0: any free port (kept for the supervisor's life once bound)
    one_offer_per_worker: bool = False


def studio_argv(data_dir: Path, port: int, *, one_offer_per_worker: bool) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "localstudio",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--auto-approve",
        "--parent-pid",
        str(os.getpid()),
    ]
    if one_offer_per_worker:
        argv.append("--one-offer-per-worker")
    return argv


@dataclass
class StudioProcess:
    """A studio that said where it listens."""

    process: Process
    stdout: BufferedByteReceiveStream
    url: str
    started: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def wait(self) -> ExitInfo:
        """Until the studio exits, reading (and dropping) whatever else it prints."""
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                await self.stdout.receive()
        code = await self.process.wait()
        await self.process.aclose()
        return ExitInfo(code)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace; shielded, so it finishes when cancelled."""
        with anyio.CancelScope(shield=True):
            await stop_process(self.process)


async def stop_process(process: Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        with anyio.move_on_after(STOP_GRACE_S):
            await process.wait()
        if process.returncode is None:
            log.warning(
                "local studio pid=%d ignored SIGTERM for %.0f s; killing it",
                process.pid,
                STOP_GRACE_S,
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    await process.aclose()


async def launch_studio(data_dir: Path, spec: LocalStudioSpec) -> StudioProcess:
    """Start the studio and wait for its ready line; raises LocalStudioError (the process
    is gone by then) when it refuses, exits or stays silent past ``START_TIMEOUT_S``."""
    log_path = data_dir / LOG_NAME
    argv = studio_argv(data_dir, spec.port, one_offer_per_worker=spec.one_offer_per_worker)
    with _open_log(log_path) as errlog:
        process = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stderr=errlog, start_new_session=True
        )
    assert process.stdout is not None
    stdout = BufferedByteReceiveStream(process.stdout)
    try:
        line, code = await _ready_line(process, stdout)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop_process(process)
        raise
    if not line.startswith(READY_PREFIX):
        with anyio.CancelScope(shield=True):
            await stop_process(process)
        raise LocalStudioError(startup_failure(code, spec.port, log_path, line, port_holder))
    url = line[len(READY_PREFIX) :].split(" ", 1)[0].strip()
    return StudioProcess(process, stdout, url, time.monotonic())


async def _ready_line(
    process: Process, stdout: BufferedByteReceiveStream
) -> tuple[str, int | None]:
    """The first stdout line and, when the studio ended its output without one, its exit
    status; ``("", None)`` when it said nothing within ``START_TIMEOUT_S``."""
    with anyio.move_on_after(START_TIMEOUT_S):
        try:
            line = await stdout.receive_until(b"\n", LINE_MAX_BYTES)
            return line.decode(errors="replace"), None
        except (anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.EndOfStream):
            pass
        # Its stdout closed: it is exiting (a refusal or a crash); its status says which.
        return "", await process.wait()
    return "", None


def startup_failure(
    code: int | None, port: int, log_path: Path, said: str, holder: Callable[[int], str | None]
) -> str:
    """The ``error:`` text for a studio that did not come up: exited with ``code``, or
    (None) said nothing within the deadline. ``holder`` names who listens on a port."""
    where = f"(log: {log_path})"
    detail = " ".join((_log_tail(log_path) or said or "no output").split())
    if code is None:
        return f"the local studio did not start within {START_TIMEOUT_S:.0f} s: {detail} {where}"
    if code == EXIT_PORT_TAKEN:
        who = holder(port)
        held = f" ({who})" if who else ""
        return (
            f"port {port} on 127.0.0.1 is held by another program{held}, not by this "
            "config's local studio; pick another --local-port, or stop what listens there"
        )
    if code == EXIT_DATA_DIR_BUSY:
        return f"{detail} {where}"
    exited = ExitInfo(code).describe()
    return f"the local studio exited ({exited}) before it listened: {detail} {where}"


def _open_log(log_path: Path) -> BinaryIO:
    """The studio's stderr file (appended to across restarts), its directory made 0700."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return log_path.open("ab")


def _log_tail(log_path: Path) -> str:
    """The studio's last stderr line (its ``error:`` line when it refused), one line."""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    last = lines[-1].strip() if lines else ""
    return last.removeprefix("error: ")[-500:]


def port_holder(port: int) -> str | None:
    """``pid N: <command>`` of whoever listens on ``port`` of 127.0.0.1, when this user may
    see it; best effort (other users' sockets are hidden without root)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.pid is None:
                return None
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline())[:120]
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid}: {cmd}"
    return None
