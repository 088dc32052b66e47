"""A real local studio and a real ``supervisor start`` working for it, for the benches that
measure the whole worker (not a test helper: the benches run outside pytest)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from supervisor.config import WorkerConfig, save_config

REPO = Path(__file__).resolve().parents[1]
READY = re.compile(r"local studio listening on (\S+)")


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def studio_and_worker(
    root: Path,
    env: dict[str, str],
    cfg: WorkerConfig,
    start_args: Sequence[str],
    studio_args: Sequence[str] = (),
) -> Iterator[str]:
    """``python -m localstudio --auto-approve STUDIO_ARGS`` on a free port, and
    ``supervisor start START_ARGS`` with ``cfg`` pointed at it (log in
    ``root/supervisor.log``); yields the studio's URL, stops both on the way out."""
    studio = subprocess.Popen(
        [sys.executable, "-m", "localstudio", "--port", "0", "--auto-approve",
         "--data-dir", str(root / "studio"), *studio_args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        assert studio.stdout is not None
        match = READY.search(studio.stdout.readline())
        if match is None:
            raise SystemExit("the local studio did not start")
        url = match.group(1)
        config = root / "config.toml"
        save_config(config, cfg.replace(api_base_url=url))
        with root.joinpath("supervisor.log").open("wb") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-c", "from supervisor.cli.app import main; main()",
                 "--config", str(config), "start", *start_args],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        yield url
    finally:
        _stop(supervisor)
        _stop(studio)
