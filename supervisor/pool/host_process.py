"""Spawn, watch and stop one engine host process.

Hosts are started with exec (never fork: CUDA state must not be inherited) in their own
session, so a Ctrl-C meant for the supervisor does not reach them. Their stdout/stderr are
read line by line into the supervisor's log. Stopping escalates: ``Shutdown`` message ->
grace -> SIGTERM -> grace -> SIGKILL, with a log line at each step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import ByteReceiveStream, Process

from engines.__main__ import TOKEN_ENV
from supervisor.pool.slot_spec import SlotSpec, gpu_env

log = logging.getLogger("supervisor.host")


@dataclass(frozen=True)
class ExitInfo:
    returncode: int

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def describe(self) -> str:
        name = self.signal_name
        return f"killed by {name}" if name else f"exit code {self.returncode}"


@dataclass(frozen=True)
class LaunchOptions:
    endpoint: str
    models_root: Path
    heartbeat_s: float
    faults: str = ""
    extra_env: tuple[tuple[str, str], ...] = ()  # the GPU pin, when NVML named the card
    threads: int | None = None  # the inference library's CPU threads (None: the host decides)
    ask_before_load: bool = False  # GPU governance: LoadRequest before every load
    max_warm_models: int = 1
    models_max_bytes: int = 0  # disk budget of models_root; 0: none


STDERR_TAIL_LINES: Final = 40  # what a host said last, for the cause of its death
_OUTPUT_LEVELS: Final = {
    "DEBUG": logging.DEBUG,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.ERROR,
}


class HostProcess:
    def __init__(self, process: Process, identity: str, token: str, spec: SlotSpec) -> None:
        self.process = process
        self.identity = identity
        self.token = token
        self.spec = spec
        self.exit: ExitInfo | None = None
        self.exited = anyio.Event()
        self.started = time.monotonic()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._output_log = logging.getLogger(f"engines.{spec.engine}")

    def log_line(self, stream: str, line: str) -> None:
        """One line the host wrote, into the supervisor's log (logger ``engines.<engine>``,
        level from the line's first word); stderr's last lines are kept for its death."""
        if not line:
            return
        if stream == "stderr":
            self.stderr_tail.append(line)
        level = _OUTPUT_LEVELS.get(line.split(" ", 1)[0], logging.INFO)
        pid = self.pid if self.exit is None else "-"
        self._output_log.log(level, "%s slot=%s pid=%s", line, self.spec.slot_id, pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def spawn(cls, spec: SlotSpec, identity: str, opts: LaunchOptions) -> HostProcess:
        token = secrets.token_hex(16)
        env = dict(os.environ)
        # A pin from NVML (by UUID) replaces the plain index pin.
        env.update(dict(opts.extra_env) if opts.extra_env else gpu_env(spec.gpu))
        env[TOKEN_ENV] = token
        env["PYTHONUNBUFFERED"] = "1"
        argv = [
            sys.executable,
            "-m",
            "engines",
            "--engine",
            spec.engine,
            "--slot",
            identity,
            "--endpoint",
            opts.endpoint,
            "--models-root",
            str(opts.models_root),
            "--parent-pid",
            str(os.getpid()),
            "--heartbeat-s",
            str(opts.heartbeat_s),
        ]
        if opts.faults:
            argv += ["--faults", opts.faults]
        if opts.threads is not None:
            argv += ["--threads", str(opts.threads)]
        if opts.ask_before_load:
            argv.append("--ask-before-load")
        if opts.max_warm_models != 1:
            argv += ["--max-warm-models", str(opts.max_warm_models)]
        if opts.models_max_bytes:
            argv += ["--models-max-bytes", str(opts.models_max_bytes)]
        process = await anyio.open_process(argv, env=env, start_new_session=True)
        log.info("spawned engine host engine=%s slot=%s pid=%d", spec.engine, identity, process.pid)
        return cls(process, identity, token, spec)

    async def watch(self, on_line: Callable[[str, str], None]) -> None:
        """Forward output lines and record the exit; returns when the process is gone."""
        async with anyio.create_task_group() as tg:
            if self.process.stdout is not None:
                tg.start_soon(_pump_lines, self.process.stdout, "stdout", on_line)
            if self.process.stderr is not None:
                tg.start_soon(_pump_lines, self.process.stderr, "stderr", on_line)
            code = await self.process.wait()
            self.exit = ExitInfo(code)
            self.exited.set()

    def kill(self) -> None:
        if self.exit is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def reap(self) -> ExitInfo:
        """Kill and wait for the process itself: safe even after ``watch`` was cancelled."""
        with anyio.CancelScope(shield=True):
            self.kill()
            if self.exit is None:
                self.exit = ExitInfo(await self.process.wait())
                self.exited.set()
        assert self.exit is not None
        return self.exit

    async def stop(
        self,
        send_shutdown: Callable[[], Awaitable[None]] | None,
        grace_s: float,
        term_grace_s: float = 5.0,
    ) -> ExitInfo:
        """Stop the host politely, then firmly; never returns before it is gone."""
        with anyio.CancelScope(shield=True):
            if self.exit is None and send_shutdown is not None:
                try:
                    await send_shutdown()
                except Exception as exc:
                    # Not connected (yet, or any more): nobody would read the message, so
                    # waiting out its grace only delays the SIGTERM.
                    log.debug("shutdown message to %s not sent: %s", self.identity, exc)
                else:
                    await self._wait_exit(grace_s)
            if self.exit is None:
                log.warning(
                    "engine host %s pid=%d ignored shutdown; sending SIGTERM",
                    self.identity,
                    self.pid,
                )
                self._signal(signal.SIGTERM)
                await self._wait_exit(term_grace_s)
            if self.exit is None:
                log.error(
                    "engine host %s pid=%d ignored SIGTERM; sending SIGKILL",
                    self.identity,
                    self.pid,
                )
                self._signal(signal.SIGKILL)
        return await self.reap()

    async def _wait_exit(self, timeout_s: float) -> None:
        """Wait on the process itself, not on ``exited``: ``watch`` (which sets it) may
        already have been cancelled by a forced shutdown."""
        with anyio.move_on_after(timeout_s):
            code = await self.process.wait()
            if self.exit is None:
                self.exit = ExitInfo(code)
                self.exited.set()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)


async def _pump_lines(
    stream: ByteReceiveStream, name: str, on_line: Callable[[str, str], None]
) -> None:
    buf = b""
    try:
        async for chunk in stream:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                on_line(name, line.decode(errors="replace").rstrip())
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    if buf:
        on_line(name, buf.decode(errors="replace").rstrip())
