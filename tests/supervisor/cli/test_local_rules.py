"""The pure rules behind ``start --local`` and the one-supervisor lock, without a process:
which config the local worker may use, what a data dir's lock holder is, when a studio is
stale, the restart backoff, when to register again, the ``error:`` texts of a studio that
did not start; and the constants the supervisor shares with ``python -m localstudio``
without importing it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localstudio import __main__ as studio_main
from localstudio import data_lock
from supervisor.config import LaneIdentity, WorkerConfig, load_config
from supervisor.errors import AnotherSupervisorRunning, LocalConfigConflict
from supervisor.exit_codes import ExitCode
from supervisor.instance_lock import LOCK_NAME, hold_instance_lock, holder_pid
from supervisor.owned_studio import launch, stale
from supervisor.owned_studio.keeper import STABLE_S, next_restart_attempt
from supervisor.owned_studio.ownership import (
    check_owned_config,
    is_loopback_url,
    local_config_path,
    pointed_at,
)
from supervisor.owned_studio.stale import Holder, HolderFacts, Verdict, stale_verdict
from supervisor.runtime import StartOptions, Supervisor
from supervisor.studio.session_loop import may_register_again

REMOTE = "https://studio.example/"
REGISTERED = {"worker_id": "w-1", "auth_token": "tok", "install_id": "i-1"}


# --- which config `start --local` may use ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:9790/", True),
        ("http://127.1.2.3:80", True),
        ("http://localhost:9790/", True),
        ("http://[::1]:9790/", True),
        ("https://studio.example/", False),
        ("http://192.168.1.10:9790/", False),
        ("ftp://127.0.0.1/", False),
        ("not a url", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@pytest.mark.parametrize(
    "fields",
    [{"worker_id": "w-1"}, {"auth_token": "tok"}, {"registration_request_id": "rr-1"}, REGISTERED],
)
def test_a_config_registered_elsewhere_is_refused(fields: dict[str, str], tmp_path: Path) -> None:
    cfg = WorkerConfig(api_base_url=REMOTE, **fields)
    with pytest.raises(LocalConfigConflict) as refused:
        check_owned_config(cfg, tmp_path / "config.toml")
    assert refused.value.exit_code is ExitCode.USAGE
    assert f"is registered with the studio at {REMOTE}" in str(refused.value)
    assert str(local_config_path()) in str(refused.value)  # where the local worker's own is
    assert "tok" not in str(refused.value)


@pytest.mark.parametrize(
    "cfg",
    [
        WorkerConfig(),  # a fresh file (the default URL, nothing registered)
        WorkerConfig(api_base_url=REMOTE),
        WorkerConfig(api_base_url="http://127.0.0.1:4242/", **REGISTERED),  # a local studio's
        # A lane's own threshold is no registration.
        WorkerConfig(api_base_url=REMOTE, lane={"gpu1": LaneIdentity(vram_threshold_gb=8.0)}),
    ],
)
def test_a_fresh_or_local_config_is_the_local_workers(cfg: WorkerConfig, tmp_path: Path) -> None:
    check_owned_config(cfg, tmp_path / "config.toml")


def test_pointing_a_config_at_the_studio() -> None:
    url = "http://127.0.0.1:9790"
    same = WorkerConfig(api_base_url=url + "/", **REGISTERED)
    assert pointed_at(same, url) is None  # the same studio: registration kept, nothing saved
    moved = pointed_at(WorkerConfig(api_base_url="http://127.0.0.1:4242/", **REGISTERED), url)
    assert moved is not None
    assert moved.api_base_url == url + "/"
    assert (moved.worker_id, moved.auth_token, moved.install_id) == (None, None, None)
    lanes = {
        "gpu0": LaneIdentity(vram_threshold_gb=8.0),
        "gpu1": LaneIdentity(worker_id="w-2", auth_token="tok-2", vram_threshold_gb=6.0),
        "gpu2": LaneIdentity(worker_id="w-3"),
    }
    moved = pointed_at(WorkerConfig(api_base_url=REMOTE, lane=lanes), url)
    assert moved is not None
    assert moved.lane == {  # every lane's registration goes; their thresholds stay
        "gpu0": LaneIdentity(vram_threshold_gb=8.0),
        "gpu1": LaneIdentity(vram_threshold_gb=6.0),
    }


def test_a_lane_registered_elsewhere_is_refused(tmp_path: Path) -> None:
    cfg = WorkerConfig(api_base_url=REMOTE, lane={"gpu1": LaneIdentity(worker_id="w-2")})
    with pytest.raises(LocalConfigConflict):
        check_owned_config(cfg, tmp_path / "config.toml")


# --- the data dir's lock and stale studios ----------------------------------------------------


def test_the_lock_line_the_studio_writes_is_the_one_the_supervisor_reads() -> None:
    for parent in (1234, None):
        text = data_lock.render_holder(42, parent)
        assert data_lock.parse_holder(text) == data_lock.LockHolder(42, parent)
        assert stale.parse_holder(text) == Holder(42, parent)
    assert stale.parse_holder("") == Holder(None, None)
    assert stale.parse_holder("pid=x parent=") == Holder(None, None)
    assert stale.LOCK_NAME == data_lock.LOCK_NAME


def test_exit_statuses_shared_with_python_m_localstudio() -> None:
    assert launch.EXIT_PORT_TAKEN == studio_main.EXIT_PORT_TAKEN
    assert launch.EXIT_DATA_DIR_BUSY == studio_main.EXIT_DATA_DIR_BUSY
    assert launch.READY_PREFIX == studio_main.READY_PREFIX
    assert len({studio_main.EXIT_REFUSED, launch.EXIT_PORT_TAKEN, launch.EXIT_DATA_DIR_BUSY}) == 3


@pytest.mark.parametrize(
    ("holder", "facts", "verdict"),
    [
        (Holder(10, 5), HolderFacts(is_studio=True, ppid=1), Verdict.STALE),  # orphaned
        (Holder(10, 5), HolderFacts(is_studio=True, ppid=5), Verdict.FOREIGN),  # parent alive
        (Holder(10, None), HolderFacts(is_studio=True, ppid=1), Verdict.FOREIGN),  # by hand
        (Holder(10, 5), HolderFacts(is_studio=False, ppid=1), Verdict.FOREIGN),  # pid reused
        (Holder(10, 5), None, Verdict.FOREIGN),  # gone between the probe and the look
        (Holder(None, 5), None, Verdict.FOREIGN),  # no pid written
    ],
)
def test_only_an_orphaned_studio_a_supervisor_started_is_stale(
    holder: Holder, facts: HolderFacts | None, verdict: Verdict
) -> None:
    assert stale_verdict(holder, facts) is verdict


def test_nobody_holds_a_data_dir_without_a_lock_file_or_holder(tmp_path: Path) -> None:
    assert stale.lock_holder(tmp_path) is None
    with data_lock.data_dir_lock(tmp_path, parent_pid=None):
        assert stale.lock_holder(tmp_path) == Holder(os.getpid(), None)
    assert stale.lock_holder(tmp_path) is None  # released; the file stays, emptied
    assert (tmp_path / data_lock.LOCK_NAME).read_text() == ""


# --- restarts, re-registration, messages ------------------------------------------------------


def test_restart_backoff_counts_quick_exits_and_forgives_a_stable_run() -> None:
    assert next_restart_attempt(0, 0.1) == 1
    assert next_restart_attempt(3, 0.1) == 4
    assert next_restart_attempt(3, STABLE_S) == 1


def test_register_again_once_per_welcomed_session() -> None:
    assert may_register_again(welcomed=0, welcomed_when_last_registered=None)
    assert not may_register_again(welcomed=2, welcomed_when_last_registered=2)
    assert may_register_again(welcomed=3, welcomed_when_last_registered=2)


def test_startup_failure_texts(tmp_path: Path) -> None:
    log_path = tmp_path / "studio.log"
    log_path.write_text("INFO something\nerror: another local studio (pid 7) is serving x\n")
    taken = launch.startup_failure(
        launch.EXIT_PORT_TAKEN, 9790, log_path, "", lambda _: "pid 3: nc"
    )
    assert taken.startswith("port 9790 on 127.0.0.1 is held by another program (pid 3: nc)")
    assert "pick another --local-port" in taken
    unknown = launch.startup_failure(launch.EXIT_PORT_TAKEN, 9790, log_path, "", lambda _: None)
    assert "another program, not by" in unknown
    busy = launch.startup_failure(launch.EXIT_DATA_DIR_BUSY, 9790, log_path, "", lambda _: None)
    assert busy.startswith("another local studio (pid 7) is serving x (log: ")
    crashed = launch.startup_failure(1, 9790, log_path, "", lambda _: None)
    assert crashed.startswith("the local studio exited (exit code 1) before it listened: ")
    silent = launch.startup_failure(None, 9790, log_path, "", lambda _: None)
    assert silent.startswith("the local studio did not start within 30 s")


# --- one supervisor per config ----------------------------------------------------------------


def test_the_instance_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    config = tmp_path / "cfg" / "config.toml"
    held = hold_instance_lock(config)
    assert (config.parent / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(AnotherSupervisorRunning) as refused:
        hold_instance_lock(config)  # another open file description: flock refuses it too
    assert refused.value.pid == os.getpid()
    assert refused.value.exit_code is ExitCode.ALREADY_RUNNING
    assert str(refused.value).startswith(
        f"another supervisor (pid {os.getpid()}) is running with {config}"
    )
    held.release()
    hold_instance_lock(config).release()  # free again
    assert holder_pid("") is None and holder_pid("12 x") == 12 and holder_pid("x") is None


def test_a_supervisor_refused_by_the_lock_writes_nothing(tmp_path: Path) -> None:
    """The lock comes before the config: a refused supervisor does not even create it."""
    config = tmp_path / "cfg" / "config.toml"
    held = hold_instance_lock(config)
    try:
        with pytest.raises(AnotherSupervisorRunning):
            Supervisor(StartOptions(config_path=config, engines="synthetic"))
        assert not config.exists()
    finally:
        held.release()
    load_config(config)  # (and once free, a start would create it as usual)
