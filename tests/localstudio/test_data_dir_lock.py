"""One studio per data directory, and a studio that dies with the process that started it.

In-process (two ``LocalStudio.serve`` on one data dir) and as real processes: a second
``python -m localstudio`` (and ``supervisor studio serve``) on a data dir that is in use is
refused with one ``error:`` line and its exit status, never a traceback, and the first keeps
serving; a studio started with ``--parent-pid`` stops when that process is killed with
SIGKILL, closing its database and releasing the data dir.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import psutil
import pytest

from localstudio.__main__ import EXIT_DATA_DIR_BUSY
from localstudio.client import LocalStudioClient
from localstudio.errors import DataDirBusyError
from localstudio.server import LocalStudio
from supervisor.exit_codes import ExitCode
from supervisor.owned_studio.stale import Holder, lock_holder
from tests.support.contract_harness import (
    STUDIO_READY,
    Processes,
    poll_until,
    start_studio,
)

GONE_WITHIN_S = 15.0


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it holds no port, lock or file)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.anyio
async def test_a_second_studio_in_process_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(LocalStudio(data_dir).serve, "127.0.0.1", 0)
            with pytest.raises(DataDirBusyError) as refused:
                await LocalStudio(data_dir).serve("127.0.0.1", 0)
            assert refused.value.pid == os.getpid()
            assert str(refused.value) == (
                f"another local studio (pid {os.getpid()}) is serving the data dir {data_dir}"
            )
            tg.cancel_scope.cancel()
    assert lock_holder(data_dir) is None  # released when the first stopped


def test_a_second_studio_process_on_one_data_dir_is_refused(
    processes: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = start_studio(processes, data_dir)
    second = processes.spawn(
        "second-studio",
        [sys.executable, "-m", "localstudio", "--port", "0", "--data-dir", str(data_dir)],
    )
    second.expected_codes = frozenset({EXIT_DATA_DIR_BUSY})
    assert second.wait() == EXIT_DATA_DIR_BUSY
    output = second.log.snapshot()
    assert "Traceback" not in "\n".join(output)
    assert output == [
        f"error: another local studio (pid {first.proc.pid}) is serving the data dir {data_dir}"
    ]
    # through the supervisor's command: the same refusal, its exit status
    serve = processes.run_cli("studio", "serve", "--port", "0", "--data-dir", str(data_dir))
    assert serve.returncode == ExitCode.USAGE
    assert serve.stderr.splitlines()[-1] == (
        f"error: another local studio (pid {first.proc.pid}) is serving the data dir {data_dir}"
    )
    assert "Traceback" not in serve.stderr
    assert first.client.list_jobs() == []  # the first one still serves
    first.client.close()


def test_the_studio_stops_when_its_parent_is_killed(processes: Processes, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A parent that starts the studio with --parent-pid (as `supervisor start --local` does),
    # passes its ready line on, and then waits to be killed.
    parent_code = (
        "import os, subprocess, sys, signal\n"
        "studio = subprocess.Popen([sys.executable, '-m', 'localstudio', '--port', '0', "
        f"'--data-dir', {str(data_dir)!r}, '--parent-pid', str(os.getpid())], "
        "stdout=subprocess.PIPE, text=True, start_new_session=True)\n"
        "print(studio.stdout.readline().strip(), 'pid', studio.pid, flush=True)\n"
        "signal.pause()\n"
    )
    parent = processes.spawn("parent", [sys.executable, "-c", parent_code])
    parent.expected_codes = frozenset({-signal.SIGKILL})
    _, ready = parent.log.wait_for(STUDIO_READY)
    studio_pid = int(parent.log.snapshot()[-1].rsplit(" ", 1)[1])
    assert lock_holder(data_dir) == Holder(studio_pid, parent.pid)
    client = LocalStudioClient(ready.group(1))
    try:
        assert client.list_jobs() == []
    finally:
        client.close()
    parent.note_descendants()
    assert processes.stop(parent, sig=signal.SIGKILL) == -signal.SIGKILL
    poll_until(lambda: gone(studio_pid) or None, GONE_WITHIN_S, "the orphaned studio to exit")
    assert lock_holder(data_dir) is None
    assert (data_dir / "studio.lock").read_text() == ""  # it stopped cleanly, not killed


def test_a_studio_whose_parent_is_already_gone_does_not_start(
    processes: Processes, tmp_path: Path
) -> None:
    not_my_parent = os.getppid()  # alive, but the studio's parent is the test runner
    proc = processes.spawn(
        "studio",
        [
            *[sys.executable, "-m", "localstudio", "--port", "0"],
            *["--data-dir", str(tmp_path / "data"), "--parent-pid", str(not_my_parent)],
        ],
    )
    assert proc.wait() == 0
    assert proc.log.snapshot() == [f"the parent process {not_my_parent} is gone; not starting"]
    assert not (tmp_path / "data").exists()
