"""Real processes for the contract suite: the local studio (``python -m localstudio``) and
supervisors (``supervisor ... start``) as subprocesses on 127.0.0.1, plus the CLI.

Every process is started through a ``Processes`` registry (the ``processes`` fixture). Its
output (stdout and stderr merged) is read line by line by a thread, so tests wait for a
log line instead of sleeping. At teardown every process still running gets SIGTERM, then
SIGKILL after a grace; the test fails if a process needed SIGKILL, exited with an
unexpected status, or left a descendant (an engine host, a studio) behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import pytest

from localstudio.client import LocalStudioClient
from supervisor.cli.start_command import REGISTRATION_POLL_ENV
from supervisor.config import WorkerConfig, save_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from supervisor.cli.app import main; main()"]
STUDIO_READY = re.compile(r"local studio listening on (\S+)")
WELCOMED = re.compile(r"server welcomed (\S+)")
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 20.0
CLI_TIMEOUT_S = 60.0

T = TypeVar("T")


class LineLog:
    """Lines of one text stream, collected by a daemon thread until EOF."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.closed = False
        self._stream = stream
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name=f"log-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout_s: float = START_TIMEOUT_S, *, start: int = 0
    ) -> tuple[int, re.Match[str]]:
        """The first line at index ``start`` or later matching ``pattern`` (and its index);
        fails the test with the output's tail at the deadline or at EOF."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return index, match
                    index += 1
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "exited" if self.closed else f"printed nothing like it in {timeout_s} s"
                    pytest.fail(
                        f"{self.name} {why} while waiting for {regex.pattern!r}; "
                        f"output tail:\n{self.tail()}"
                    )
                self._cond.wait(left)

    def count(self, pattern: str | re.Pattern[str]) -> int:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._cond:
            return sum(1 for line in self.lines if regex.search(line))

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.snapshot()[-n:])

    def finish(self, timeout_s: float = 10.0) -> bool:
        """Wait for EOF and close the stream; False if the pipe is still held open (by a
        process left behind), in which case it stays open: closing a stream another thread
        is reading would block."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return False
        self._stream.close()
        return True


@dataclass
class Proc:
    """One started process and its merged output."""

    name: str
    popen: subprocess.Popen[str]
    log: LineLog
    expected_codes: frozenset[int] = frozenset({0})
    descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def note_descendants(self) -> None:
        """Remember the current descendants (engine hosts...) to check they go away too."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.descendants |= {c.pid for c in psutil.Process(self.pid).children(recursive=True)}

    def signal(self, signum: int) -> None:
        if self.alive():
            self.note_descendants()
            self.popen.send_signal(signum)

    def wait(self, timeout_s: float = STOP_GRACE_S) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} still running after {timeout_s} s:\n{self.log.tail()}")


class Processes:
    """Starts processes and guarantees none outlives the test."""

    def __init__(self, tmp_path: Path, *, stop_grace_s: float = STOP_GRACE_S) -> None:
        self.procs: list[Proc] = []
        self.stop_grace_s = stop_grace_s
        home = tmp_path / "home"
        home.mkdir(exist_ok=True)
        # Nothing may touch the real home: every default path points into tmp_path.
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "PYTHONUNBUFFERED": "1",
            REGISTRATION_POLL_ENV: "0.2",
            "SENTRY_DSN": "",  # telemetry only where a test turns it on
        }

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        unset: tuple[str, ...] = (),
        cwd: Path = REPO_ROOT,
        **env: str,
    ) -> Proc:
        """Start ``argv`` with the test environment plus ``env``, minus ``unset``."""
        full_env = {k: v for k, v in {**self.env, **env}.items() if k not in unset}
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert popen.stdout is not None
        proc = Proc(name, popen, LineLog(popen.stdout, name))
        self.procs.append(proc)
        return proc

    def run_cli(
        self, *args: str, timeout_s: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """One short-lived ``supervisor`` command; returns its result (not checked)."""
        return subprocess.run(
            [*CLI, *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def stop(self, proc: Proc, *, sig: int = signal.SIGTERM) -> int:
        """Signal ``proc`` and wait for it; returns its exit status."""
        proc.signal(sig)
        return proc.wait()

    def close(self) -> None:
        problems: list[str] = []
        for proc in reversed(self.procs):
            if proc.alive():
                proc.signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                code = proc.popen.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                problems.append(f"{proc.name} ignored SIGTERM for {self.stop_grace_s} s; killed")
                proc.popen.kill()
                code = proc.popen.wait()
            if code not in proc.expected_codes:
                problems.append(
                    f"{proc.name} exited with {code} (expected {sorted(proc.expected_codes)}); "
                    f"output tail:\n{proc.log.tail()}"
                )
        leftovers = self._reap_descendants()
        if leftovers:
            problems.append(f"processes left behind (killed now): {leftovers}")
        for proc in self.procs:
            if not proc.log.finish():
                problems.append(f"the output pipe of {proc.name} is still open")
        if problems:
            pytest.fail("\n".join(problems))

    def _reap_descendants(self) -> list[str]:
        pids = set().union(*(p.descendants for p in self.procs)) if self.procs else set()
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive.append(psutil.Process(pid))
        _, still = psutil.wait_procs(alive, timeout=self.stop_grace_s)
        names = []
        for p in still:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
        psutil.wait_procs(still, timeout=5)
        return names


@contextlib.contextmanager
def process_registry(tmp_path: Path) -> Iterator[Processes]:
    registry = Processes(tmp_path)
    try:
        yield registry
    finally:
        registry.close()


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it holds no port, lock or file)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def free_port() -> int:
    """A port nobody listens on right now (so a restarted studio can reuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(
    probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Call ``probe`` until it returns something other than None (bounded polling, for
    conditions nothing announces); fails the test with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# --- the local studio ---------------------------------------------------------------------


@dataclass
class StudioProcess:
    proc: Proc
    url: str
    port: int
    data_dir: Path
    client: LocalStudioClient

    @property
    def api_base_url(self) -> str:
        return self.url.rstrip("/") + "/"


def start_studio(
    processes: Processes,
    data_dir: Path,
    *,
    port: int = 0,
    auto_approve: bool = True,
    name: str = "studio",
    one_offer_per_worker: bool = False,
) -> StudioProcess:
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
    ]
    if auto_approve:
        argv.append("--auto-approve")
    if one_offer_per_worker:
        argv.append("--one-offer-per-worker")
    proc = processes.spawn(name, argv)
    _, match = proc.log.wait_for(STUDIO_READY)
    url = match.group(1)
    bound = int(url.rsplit(":", 1)[1].rstrip("/"))
    client = LocalStudioClient(url)
    return StudioProcess(proc, url, bound, data_dir, client)


# --- supervisors --------------------------------------------------------------------------


def write_worker_config(path: Path, api_base_url: str, **overrides: Any) -> WorkerConfig:
    """A config for a fresh worker (no credentials) with short restart timings."""
    values: dict[str, Any] = {
        "api_base_url": api_base_url,
        "models_root": path.parent / "models",
        "engines": ("synthetic",),
        "restart_backoff_base_s": 0.05,
        "restart_backoff_max_s": 0.5,
        "drain_grace_s": 5.0,
        "ready_timeout_s": 30.0,
    }
    values.update(overrides)
    cfg = WorkerConfig(**values)
    save_config(path, cfg)
    return cfg


@dataclass
class SupervisorProcess:
    proc: Proc
    config_path: Path
    processes: Processes

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``supervisor --config <this config> ARGS``, checked for exit status 0."""
        done = self.processes.run_cli("--config", str(self.config_path), *args)
        assert done.returncode == 0, f"supervisor {' '.join(args)} failed: {done.stderr}"
        return done

    def status(self) -> str:
        return self.cli("status").stdout

    def wait_welcomed(self, *, start: int = 0, timeout_s: float = START_TIMEOUT_S) -> int:
        """Index of the next ``server welcomed`` line at or after ``start``."""
        index, _ = self.proc.log.wait_for(WELCOMED, timeout_s, start=start)
        return index

    def json_logs(self) -> list[dict[str, Any]]:
        """Parsed lines of a supervisor started with ``--log-format json``."""
        entries = []
        for line in self.proc.log.snapshot():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "message" in entry:
                    entries.append(entry)
        return entries


def start_supervisor(
    processes: Processes,
    config_path: Path,
    *args: str,
    engines: str = "synthetic",
    name: str = "supervisor",
    expected_codes: frozenset[int] = frozenset({0}),
    unset: tuple[str, ...] = (),
) -> SupervisorProcess:
    """``supervisor --config PATH start --engines ENGINES ARGS`` as a real process."""
    argv = [*CLI, "--config", str(config_path), "start", "--engines", engines, *args]
    proc = processes.spawn(name, argv, unset=unset)
    proc.expected_codes = expected_codes
    return SupervisorProcess(proc, config_path, processes)


def slot_lines(status_text: str) -> list[str]:
    """The slot rows of ``supervisor status`` (after the ``SLOT`` header)."""
    lines = status_text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("SLOT"))
    return [line.strip() for line in lines[header + 1 :] if line.startswith("  ") and line.strip()]


def job_outcomes(status_text: str) -> dict[str, int]:
    """``jobs:`` line of ``supervisor status`` as a dict (``done=3, rejected_busy=1``)."""
    match = re.search(r"^jobs:\s+(.*)$", status_text, re.MULTILINE)
    assert match, status_text
    if match.group(1).strip() == "none yet":
        return {}
    pairs = (item.split("=") for item in match.group(1).split(", "))
    return {key: int(value) for key, value in pairs}
