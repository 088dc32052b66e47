"""One supervisor per config, as real processes: a second ``supervisor start`` on the config
of a running one is refused with one ``error:`` line naming the first one's pid and exit
status 6 (ALREADY_RUNNING), and the first keeps its session, its control socket and its
worker id; once the first is gone (``kill -9`` included), a start works again."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from supervisor.config import load_config
from supervisor.exit_codes import ExitCode
from supervisor.ops.control import socket_path
from tests.support.contract_harness import (
    WELCOMED,
    Processes,
    StudioProcess,
    start_supervisor,
    write_worker_config,
)


def test_a_second_start_on_one_config_is_refused_and_the_first_keeps_serving(
    processes: Processes, studio: StudioProcess, tmp_path: Path
) -> None:
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url)
    first = start_supervisor(processes, config, name="first")
    first.wait_welcomed()
    worker_id = load_config(config).worker_id
    socket_inode = socket_path(config).stat().st_ino

    second = processes.run_cli("--config", str(config), "start", "--engines", "synthetic")
    assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert second.stderr.splitlines() == [
        f"error: another supervisor (pid {first.proc.pid}) is running with {config}; "
        f"`supervisor --config {config} status` shows it: stop it before starting another"
    ]
    # The first still serves: same socket (not unlinked and re-bound), same session, same id.
    assert socket_path(config).stat().st_ino == socket_inode
    status = first.status()
    assert re.search(rf"^supervisor:\s+running \(pid {first.proc.pid}\)$", status, re.M), status
    assert f"as {worker_id}" in status
    assert first.proc.log.count(WELCOMED) == 1  # never knocked off, never reconnected
    assert load_config(config).worker_id == worker_id
    assert [w.worker_id for w in studio.client.workers() if w.connected] == [worker_id]

    # The kernel drops the lock with the process, SIGKILL included: the next start works.
    first.proc.note_descendants()
    first.proc.expected_codes = frozenset({-signal.SIGKILL})
    assert processes.stop(first.proc, sig=signal.SIGKILL) == -signal.SIGKILL
    again = start_supervisor(processes, config, name="again")
    again.wait_welcomed()
    assert f"running (pid {again.proc.pid})" in again.status()
    assert load_config(config).worker_id == worker_id
