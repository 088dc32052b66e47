"""``supervisor start --local``: run a local studio beside the supervisor.

The studio runs as its own process (``python -m localstudio``; the supervisor never imports
it) with auto-approval, on 127.0.0.1, with its data next to a config file of its own, so the
operator's real registration is never touched. The supervisor then registers with it like
with any studio. ``--one-offer-per-worker`` is handed on to the studio (it then offers like
the cloud studio: one job at a time per worker).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from supervisor.cli.commands import REGISTRATION_FIELDS
from supervisor.config import default_config_path, load_config, save_config
from supervisor.errors import LocalStudioError

log = logging.getLogger("supervisor.local")

READY_PREFIX: Final = "local studio listening on "
START_TIMEOUT_S: Final = 30.0


def local_config_path() -> Path:
    return default_config_path().parent / "local" / "config.toml"


@contextlib.contextmanager
def local_studio(
    config_path: Path, port: int, *, one_offer_per_worker: bool = False
) -> Iterator[str]:
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
    if one_offer_per_worker:
        argv.append("--one-offer-per-worker")
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "studio.log"
    # stderr goes to a file: an unread pipe would fill up and freeze the studio.
    with log_path.open("ab") as errlog:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errlog, text=True)
    try:
        url = _read_ready_line(proc, log_path)
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
        if proc.stdout is not None:
            proc.stdout.close()


def _read_ready_line(proc: subprocess.Popen[str], log_path: Path) -> str:
    """The URL from the studio's first stdout line; afterwards stdout is drained in the
    background so the studio never blocks on it."""
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, name="local-studio-stdout", daemon=True).start()
    try:
        line = lines.get(timeout=START_TIMEOUT_S)
    except queue.Empty:
        line = ""
    if not line.startswith(READY_PREFIX):
        proc.kill()
        tail = log_path.read_text(errors="replace").strip()[-500:] if log_path.exists() else ""
        detail = " ".join((tail or line or "no output").split())  # one `error:` line
        raise LocalStudioError(
            f"the local studio did not start within {START_TIMEOUT_S:.0f} s: {detail} "
            f"(log: {log_path}; pick another --local-port if the port is taken)"
        )
    return line[len(READY_PREFIX) :].split(" ", 1)[0].strip()


def _point_config_at(config_path: Path, url: str) -> None:
    cfg = load_config(config_path)
    base = url.rstrip("/") + "/"
    if cfg.api_base_url == base:
        return
    # A different studio (e.g. another port) means the old credentials are void there.
    cfg = cfg.replace(api_base_url=base, **dict.fromkeys(REGISTRATION_FIELDS))
    save_config(config_path, cfg)
