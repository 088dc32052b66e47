"""``supervisor start --local`` as a first-class way to run, with real processes only: the
supervisor, the local studio it owns (``python -m localstudio``), its engine host.

Its studio dies with it (``kill -9`` included) and the next start works; a stale studio
left behind is found and stopped; a port held by another program is named as such; a
studio that dies under a running supervisor comes back; a studio whose data was reset is
registered with again by the supervisor itself (never a studio it does not own);
``status|pause|resume --local`` reach it; a config of another studio is refused untouched.
Processes are awaited through their log lines, a process's end through bounded polling.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.config import load_config
from supervisor.exit_codes import ExitCode
from supervisor.owned_studio.stale import Holder, lock_holder
from tests.support.contract_harness import (
    CLI,
    WELCOMED,
    Processes,
    SupervisorProcess,
    free_port,
    gone,
    poll_until,
    start_studio,
    start_supervisor,
    write_worker_config,
)

STUDIO_RUNNING = re.compile(r"local studio running at (\S+) pid=(\d+)")
GONE_WITHIN_S = 15.0
KILLED = frozenset({-signal.SIGKILL})


def start_local(
    processes: Processes,
    config: Path,
    port: int,
    *,
    name: str = "supervisor-local",
    expected_codes: frozenset[int] = frozenset({0}),
) -> tuple[SupervisorProcess, int]:
    """``start --local`` on ``config`` and ``port``, welcomed; returns it and its studio's pid."""
    sup = start_supervisor(
        processes,
        config,
        "--local",
        "--local-port",
        str(port),
        name=name,
        expected_codes=expected_codes,
    )
    _, running = sup.proc.log.wait_for(STUDIO_RUNNING)
    assert running.group(1) == f"http://127.0.0.1:{port}"
    sup.wait_welcomed()
    return sup, int(running.group(2))


def test_kill_9_takes_the_studio_along_and_the_next_start_works(
    processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "local" / "config.toml"
    port = free_port()
    sup, studio_pid = start_local(processes, config, port, expected_codes=KILLED)
    worker_id = load_config(config).worker_id
    sup.proc.note_descendants()
    processes.stop(sup.proc, sig=signal.SIGKILL)
    poll_until(lambda: gone(studio_pid) or None, GONE_WITHIN_S, "the local studio to exit")
    assert lock_holder(config.parent / "studio") is None  # data dir free
    # It stopped cleanly (database closed, lock emptied), not killed half-way by a second
    # PR_SET_PDEATHSIG: the supervisor has many threads, and each re-parenting sends one.
    assert (config.parent / "studio" / "studio.lock").read_text() == ""

    again, _ = start_local(processes, config, port, name="supervisor-again")
    assert load_config(config).worker_id == worker_id  # same studio data: still registered
    assert again.proc.log.count("stale") == 0
    assert processes.stop(again.proc) == 0


def test_a_stale_studio_is_found_and_stopped(processes: Processes, tmp_path: Path) -> None:
    """A studio that could not act on its parent's death (stopped: SIGSTOP) outlives the
    supervisor, holding the port and the data dir; the next start stops it."""
    config = tmp_path / "local" / "config.toml"
    data_dir = config.parent / "studio"
    port = free_port()
    sup, studio_pid = start_local(processes, config, port, expected_codes=KILLED)
    os.kill(studio_pid, signal.SIGSTOP)
    processes.stop(sup.proc, sig=signal.SIGKILL)
    assert lock_holder(data_dir) == Holder(studio_pid, sup.proc.pid)
    assert not gone(studio_pid)

    again, _ = start_local(processes, config, port, name="supervisor-again")
    log = again.proc.log
    log.wait_for(rf"stopping a stale local studio pid={studio_pid} \(its supervisor pid=")
    log.wait_for(rf"stopped the stale local studio pid={studio_pid}")
    assert gone(studio_pid)
    assert processes.stop(again.proc) == 0


def test_a_port_held_by_another_program_is_named(processes: Processes, tmp_path: Path) -> None:
    config = tmp_path / "local" / "config.toml"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        done = processes.run_cli(
            "--config", str(config), "start", "--local", "--local-port", str(port)
        )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [done.stderr.splitlines()[-1]]
    assert errors[0].startswith(
        f"error: port {port} on 127.0.0.1 is held by another program (pid {os.getpid()}: "
    )
    assert "pick another --local-port" in errors[0]
    assert "spawned engine host" not in done.stderr  # refused before any host


def test_a_studio_that_dies_under_the_supervisor_comes_back(
    processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "local" / "config.toml"
    port = free_port()
    sup, studio_pid = start_local(processes, config, port)
    welcomed_at, _ = sup.proc.log.wait_for(WELCOMED)
    worker_id = load_config(config).worker_id
    os.kill(studio_pid, signal.SIGKILL)
    log = sup.proc.log
    log.wait_for(
        rf"local studio pid={studio_pid} exited \(killed by SIGKILL\); restarting it in [\d.]+ s"
    )
    _, restarted = log.wait_for(r"local studio restarted at (\S+) pid=(\d+)")
    assert restarted.group(1) == f"http://127.0.0.1:{port}"  # where the config points
    assert int(restarted.group(2)) != studio_pid
    sup.wait_welcomed(start=welcomed_at + 1)
    assert load_config(config).worker_id == worker_id  # same data dir: same registration
    sup.proc.note_descendants()  # the restarted studio must stop with it too
    assert processes.stop(sup.proc) == 0
    assert gone(int(restarted.group(2)))


def test_a_reset_local_studio_is_registered_with_again(
    processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "local" / "config.toml"
    port = free_port()
    sup, _ = start_local(processes, config, port)
    old_id = load_config(config).worker_id
    assert processes.stop(sup.proc) == 0
    shutil.rmtree(config.parent / "studio")  # the studio forgets every worker

    again, _ = start_local(processes, config, port, name="supervisor-again")
    log = again.proc.log
    log.wait_for(r"auth failed: 401 on websocket upgrade; the local studio no longer knows")
    log.wait_for(r"registration approved worker_id=")
    new = load_config(config)
    assert new.has_credentials and new.worker_id != old_id
    assert f"as {new.worker_id}" in again.status()
    assert processes.stop(again.proc) == 0


def test_a_reset_studio_it_does_not_own_stops_it_with_exit_3(
    processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "studio-data"
    studio = start_studio(processes, data_dir, port=port)
    studio.client.close()
    config = tmp_path / "worker" / "config.toml"
    write_worker_config(config, studio.api_base_url)
    sup = start_supervisor(processes, config, expected_codes=frozenset({ExitCode.AUTH}))
    sup.wait_welcomed()
    assert processes.stop(studio.proc) == 0
    shutil.rmtree(data_dir)
    start_studio(processes, data_dir, port=port, name="studio-reset").client.close()
    assert sup.proc.wait() == ExitCode.AUTH
    assert sup.proc.log.count(r"auth failed: .*\. Re-register the worker\.") == 1
    assert sup.proc.log.count("registering with it again") == 0


@pytest.fixture
def short_config_home(processes: Processes) -> Iterator[Path]:
    """XDG_CONFIG_HOME in a short directory: the control socket beside the default config
    must fit in AF_UNIX's 108 bytes, which tmp_path's long names can exceed."""
    with tempfile.TemporaryDirectory(prefix="sw-", dir="/tmp") as short:
        processes.env["XDG_CONFIG_HOME"] = short
        yield Path(short)


def test_status_pause_resume_and_a_second_start_with_local(
    processes: Processes, short_config_home: Path
) -> None:
    """Without --config: the local worker's own config, for `start` and the control
    commands alike; the plain commands address the default config's supervisor."""
    port = free_port()
    proc = processes.spawn(
        "supervisor-local", [*CLI, "start", "--local", "--local-port", str(port)]
    )
    proc.log.wait_for(WELCOMED)
    status = processes.run_cli("status", "--local")
    assert status.returncode == 0, status.stderr
    assert f"running (pid {proc.pid})" in status.stdout
    assert f"api_base_url:       http://127.0.0.1:{port}/" in status.stdout
    plain = processes.run_cli("status")
    assert plain.returncode == ExitCode.FAILED
    assert "no supervisor is running for this config" in plain.stderr

    paused = processes.run_cli("pause", "--local")
    assert paused.returncode == 0 and paused.stdout.startswith("paused"), paused.stderr
    assert re.search(r"^claiming:\s+paused$", processes.run_cli("status", "--local").stdout, re.M)
    resumed = processes.run_cli("resume", "--local")
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed"), resumed.stderr

    second = processes.run_cli("start", "--local", "--local-port", str(free_port()))
    assert second.returncode == ExitCode.ALREADY_RUNNING, second.stderr
    assert second.stderr.splitlines()[-1].startswith(
        f"error: another supervisor (pid {proc.pid}) is running with "
    )
    proc.note_descendants()
    assert processes.stop(proc) == 0


def test_a_config_of_another_studio_is_refused_untouched(
    processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "mine" / "config.toml"
    write_worker_config(
        config,
        "https://studio.example/",
        worker_id="w-remote",
        auth_token="tok-SECRET-remote",
        install_id="11111111-2222-3333-4444-555555555555",
    )
    before = config.read_bytes()
    done = processes.run_cli(
        "--config", str(config), "start", "--local", "--local-port", str(free_port())
    )
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {config} is registered with the studio at https://studio.example/; "
        "`start --local` would replace that registration. Run `supervisor start --local` "
        "without --config (it keeps its own config, "
        f"{Path(processes.env['XDG_CONFIG_HOME']) / 'minis-studio-worker/local/config.toml'}), "
        "or give it a config of its own"
    ]
    assert "tok-SECRET" not in done.stderr
    assert config.read_bytes() == before
    assert not (config.parent / "studio").exists()  # no studio was started
