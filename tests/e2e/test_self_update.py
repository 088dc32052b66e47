"""Updates that install themselves, end to end and offline: a local package index (a
directory of wheels built from this tree: the running release and newer ones), a real
non-editable virtualenv holding the running release, and ``supervisor start --local`` from
that virtualenv, with ``self_install = true`` and a one-second check interval.

A newer release is found, waits for the running job, is installed, proves its
``supervisor --version``, and the supervisor re-executes into it (same pid, same
arguments) after stopping its engine hosts and its studio: none of the old processes
remain. A release that never reaches the studio's ``welcome`` is rolled back to the kept
wheel, offline, and not retried. A release that pins other engine wrappers is reported
with the command to run, never installed; an index that cannot be reached is one
``error:`` line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from localstudio.client import LocalStudioClient
from protocol.tasks import ChatMessage, LlmTask, ModelCliDefaults, ModelSource
from supervisor.updates.state import rolled_back, updates_dir
from tests.support.contract_harness import (
    WELCOMED,
    Proc,
    Processes,
    free_port,
    gone,
    poll_until,
    write_worker_config,
)
from tests.support.wheels import build_wheel, derive_wheel, make_venv, wheel_version

SYNTHETIC = ModelSource("synthetic", [], ModelCliDefaults(1.0, 8, 512, 512))
STUDIO_RUNNING = re.compile(r"local studio running at (\S+) pid=(\d+)")
UPDATE_TIMEOUT_S = 180.0
# A release whose lanes never reach the studio: it starts, answers --version, and waits.
NEVER_WELCOMED = """
async def serve_lane(lane, ctx):  # the broken release of the rollback test
    await ctx.stop.wait()
"""


# A release whose command line does not even start: `supervisor --version` fails.
NO_COMMAND_LINE = 'raise SystemExit("this release cannot start")\n'


@dataclass(frozen=True)
class Releases:
    current: Path
    newer: Path
    broken: Path
    unstartable: Path
    other_pins: Path

    @property
    def newer_version(self) -> str:
        return wheel_version(self.newer)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    root = tmp_path_factory.mktemp("wheels")
    current = build_wheel(root)
    major, minor, micro = (int(p) for p in wheel_version(current).split(".")[:3])
    newer = f"{major}.{minor}.{micro + 1}"
    return Releases(
        current=current,
        newer=derive_wheel(current, root / "newer", newer),
        broken=derive_wheel(
            current, root / "broken", newer, appended={"supervisor/lanes/serve.py": NEVER_WELCOMED}
        ),
        unstartable=derive_wheel(
            current,
            root / "unstartable",
            newer,
            appended={"supervisor/cli/app.py": NO_COMMAND_LINE},
        ),
        other_pins=derive_wheel(
            current,
            root / "pins",
            f"{major}.{minor + 1}.0",
            requires={"llama-cpp-python": 'llama-cpp-python==9.9.9; extra == "llama"'},
        ),
    )


@dataclass
class Installed:
    venv: Path
    index: Path
    env: dict[str, str]

    @property
    def supervisor(self) -> str:
        return str(self.venv / "bin" / "supervisor")

    def version(self) -> str:
        done = subprocess.run(
            [self.supervisor, "--version"], capture_output=True, text=True, env=self.env, check=True
        )
        return done.stdout.split()[1]

    def cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.supervisor, "--config", str(config), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.venv,
            timeout=120,
        )


@pytest.fixture
def installed(releases: Releases, processes: Processes, tmp_path: Path) -> Iterator[Installed]:
    index = tmp_path / "index"
    index.mkdir()
    shutil.copy2(releases.current, index)
    venv = tmp_path / "venv"
    make_venv(venv, releases.current)
    env = {k: v for k, v in processes.env.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,  # only what this test says: no machine index, no cache
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(index),
        "PIP_NO_CACHE_DIR": "1",
        "STUDIO_WORKER_UPDATE_IN_CONTAINER": "1",  # CI itself runs in a container
    }
    yield Installed(venv, index, env)


def start_local(installed: Installed, processes: Processes, config: Path, *args: str) -> Proc:
    port = free_port()
    write_worker_config(
        config,
        f"http://127.0.0.1:{port}/",
        self_install=True,
        auto_update_interval_secs=1,
        self_install_probation_s=6.0,
    )
    argv = [installed.supervisor, "--config", str(config), "start", "--local"]
    argv += ["--local-port", str(port), "--engines", "synthetic", *args]
    unset = tuple(k for k in processes.env if k not in installed.env)
    return processes.spawn(
        "supervisor-venv", argv, cwd=installed.venv, unset=unset, **installed.env
    )


def family(pid: int) -> set[int]:
    """The pids under ``pid`` now (engine hosts, the owned studio)."""
    return {c.pid for c in psutil.Process(pid).children(recursive=True)}


def at_least(count: int, pids: set[int]) -> set[int] | None:
    return pids if len(pids) >= count else None


def test_a_newer_release_waits_for_the_job_then_installs_and_re_executes(
    releases: Releases, installed: Installed, processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "worker" / "config.toml"
    old_version = installed.version()
    sup = start_local(installed, processes, config, "--faults", "slow-job=4")
    _, running = sup.log.wait_for(STUDIO_RUNNING)
    sup.log.wait_for(WELCOMED)
    with LocalStudioClient(running.group(1)) as client:
        task = LlmTask(messages=[ChatMessage("user", "a job the update waits for")], max_tokens=8)
        job = client.submit_job("synthetic-slow", task, SYNTHETIC)
        poll_until(
            lambda: True if client.get_job(job.id).status == "claimed" else None,
            30.0,
            "job running",
        )
        old = family(sup.pid)
        shutil.copy2(releases.newer, installed.index)  # a release appears mid-job
        done = client.wait_for_job(job.id, timeout_s=60.0)
    # Finished on the old release, not cut short by the update (it would be retried).
    assert (done.status, done.attempts) == ("done", 0), done
    at, _ = sup.log.wait_for(re.compile(r"re-executing: update to (\S+)"), UPDATE_TIMEOUT_S)
    assert all(gone(pid) for pid in old), [p for p in old if not gone(p)]
    sup.log.wait_for(re.compile(r"update to \S+ confirmed"), UPDATE_TIMEOUT_S, start=at)
    sup.log.wait_for(WELCOMED, UPDATE_TIMEOUT_S, start=at)
    assert sup.alive()  # the same process, re-executed
    assert installed.version() == releases.newer_version != old_version
    state = updates_dir(config)
    assert not (state / "probation.json").exists()
    assert list((state / "kept").glob(f"studio_worker-{old_version}-*.whl"))
    up_to_date = re.compile(rf"^update:\s+up to date \({re.escape(releases.newer_version)}", re.M)
    poll_until(
        lambda: up_to_date.search(installed.cli(config, "status").stdout),
        30.0,
        "status says up to date",
    )
    assert processes.stop(sup) == 0


def test_a_release_that_reaches_no_welcome_is_rolled_back_and_not_retried(
    releases: Releases, installed: Installed, processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "worker" / "config.toml"
    old_version = installed.version()
    shutil.copy2(releases.broken, installed.index)
    sup = start_local(installed, processes, config)
    at, _ = sup.log.wait_for(re.compile(r"re-executing: update to"), UPDATE_TIMEOUT_S)
    _, studio = sup.log.wait_for(STUDIO_RUNNING, UPDATE_TIMEOUT_S, start=at)
    # The broken release's own studio and engine host, both up before its probation ends.
    broken_run = poll_until(lambda: at_least(2, family(sup.pid)), 30.0, "host and studio")
    assert int(studio.group(2)) in broken_run
    back, _ = sup.log.wait_for(
        re.compile(r"reached no studio welcome within .*rolling back"), UPDATE_TIMEOUT_S, start=at
    )
    at, _ = sup.log.wait_for(re.compile(r"re-executing: rollback to"), UPDATE_TIMEOUT_S, start=back)
    assert all(gone(pid) for pid in broken_run), [p for p in broken_run if not gone(p)]
    sup.log.wait_for(WELCOMED, UPDATE_TIMEOUT_S, start=at)
    assert installed.version() == old_version
    assert releases.newer_version in rolled_back(config)
    sup.log.wait_for(re.compile(r"was rolled back recently; not retried"), 60.0, start=at)
    assert sup.log.count("re-executing: update to") == 1
    assert processes.stop(sup) == 0


def test_a_release_whose_command_fails_is_undone_and_the_old_one_keeps_serving(
    releases: Releases, installed: Installed, processes: Processes, tmp_path: Path
) -> None:
    config = tmp_path / "worker" / "config.toml"
    old_version = installed.version()
    sup = start_local(installed, processes, config)
    _, running = sup.log.wait_for(STUDIO_RUNNING)
    sup.log.wait_for(WELCOMED)
    shutil.copy2(releases.unstartable, installed.index)
    failed = re.compile(r"update to \S+ failed: the new `supervisor --version` failed")
    first, _ = sup.log.wait_for(failed, UPDATE_TIMEOUT_S)
    with LocalStudioClient(running.group(1)) as client:  # still serving, on the old release
        task = LlmTask(messages=[ChatMessage("user", "after a failed update")], max_tokens=8)
        job = client.wait_for_job(client.submit_job("synthetic", task, SYNTHETIC).id, timeout_s=60)
    assert job.status == "done", job
    sup.log.wait_for(failed, UPDATE_TIMEOUT_S, start=first + 1)  # tried again, next interval
    # The stop waits for an install in flight to be undone: the old release is what stays.
    assert processes.stop(sup) == 0
    assert installed.version() == old_version
    assert sup.log.count("re-executing") == 0
    assert sup.log.count(WELCOMED) == 1


def test_a_release_pinning_other_engine_wrappers_is_reported_not_installed(
    releases: Releases, installed: Installed, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    write_worker_config(config, "http://127.0.0.1:9/", self_install=True)
    shutil.copy2(releases.other_pins, installed.index)
    done = installed.cli(config, "check-update")
    assert done.returncode == 0, done.stderr
    newest = wheel_version(releases.other_pins)
    assert (
        f"newest:    studio-worker {newest} (newer; update needs an engine rebuild" in done.stdout
    )
    assert "llama-cpp-python" in done.stdout
    assert (
        f"pip install --force-reinstall --no-cache-dir 'studio-worker[llama,sdcpp]=={newest}'"
        in (done.stdout)
    )
    assert installed.version() == wheel_version(releases.current)


def test_check_update_prints_both_versions_and_fails_in_one_line_without_an_index(
    releases: Releases, installed: Installed, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    write_worker_config(config, "http://127.0.0.1:9/")
    current = wheel_version(releases.current)
    done = installed.cli(config, "check-update")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"installed: studio-worker {current}",
        f"newest:    studio-worker {current} (up to date)",
    ]
    shutil.copy2(releases.newer, installed.index)
    done = installed.cli(config, "check-update")
    assert (done.returncode, done.stderr) == (0, "")
    assert "(newer; report only (self_install = false))" in done.stdout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    installed.env.pop("PIP_NO_INDEX")
    installed.env.pop("PIP_FIND_LINKS")
    installed.env |= {
        "PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple",
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "2",
    }
    done = installed.cli(config, "check-update")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: update check: "), line
