"""``supervisor start --local``: run a local studio beside the supervisor.

The studio runs as its own process (``python -m localstudio``; the supervisor never imports
it) with auto-approval, on 127.0.0.1, with its data next to a config file of its own, so the
operator's real registration is never touched. The supervisor then registers with it like
with any studio.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from supervisor.commands import REGISTRATION_FIELDS
from supervisor.config import default_config_path, load_config, save_config
from supervisor.errors import WorkerError

log = logging.getLogger("supervisor.local")

READY_PREFIX: Final = "local studio listening on "
START_TIMEOUT_S: Final = 30.0


class LocalStudioError(WorkerError):
    """The local studio process could not be started (port taken, crash at start)."""


def local_config_path() -> Path:
    return default_config_path().parent / "local" / "config.toml"


@contextlib.contextmanager
def local_studio(config_path: Path, port: int) -> Iterator[str]:
    """Start the studio, point ``config_path`` at it, yield its URL, stop it afterwards."""
    data_dir = config_path.parent / "studio"
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
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _read_ready_line(proc)
        _point_config_at(config_path, url)
        log.info("local studio running at %s pid=%d data=%s", url, proc.pid, data_dir)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _read_ready_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the studio prints or exits
    if not line.startswith(READY_PREFIX):
        proc.wait(timeout=START_TIMEOUT_S)
        err = proc.stderr.read() if proc.stderr else ""
        raise LocalStudioError(f"the local studio did not start: {err.strip()[-500:] or line}")
    return line[len(READY_PREFIX) :].split(" ", 1)[0].strip()


def _point_config_at(config_path: Path, url: str) -> None:
    cfg = load_config(config_path)
    base = url.rstrip("/") + "/"
    if cfg.api_base_url == base:
        return
    # A different studio (e.g. another port) means the old credentials are void there.
    cfg = cfg.replace(api_base_url=base, **dict.fromkeys(REGISTRATION_FIELDS))
    save_config(config_path, cfg)
