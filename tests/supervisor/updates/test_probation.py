"""What happens to a release on probation at start and when a start fails: pure files and
process-local state, no pip run (``Reexec`` plans are checked, not executed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import __version__
from supervisor.errors import AnotherSupervisorRunning, ConfigError
from supervisor.instance_lock import hold_instance_lock
from supervisor.updates.restart import (
    Reexec,
    cancel_reexec,
    failed_probation,
    pending_reexec,
    probation_gate,
    request_reexec,
    rollback_if_start_fails,
)
from supervisor.updates.state import (
    PROBATION_STARTS,
    Probation,
    read_any_probation,
    write_probation,
)

NOW = 1_000_000.0


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "config.toml"
    path.write_text("")
    yield path
    cancel_reexec()


def on_probation(config: Path, *, deadline_at: float = NOW + 60, starts: int = 0) -> Probation:
    probation = Probation("0.0.1", __version__, "/kept.whl", 60.0, deadline_at, starts)
    write_probation(config, probation)
    return probation


def test_a_release_in_time_starts_and_counts_its_starts(config: Path) -> None:
    on_probation(config)
    assert probation_gate(config, NOW) is None
    assert probation_gate(config, NOW) is None
    probation = read_any_probation(config)
    assert probation is not None and probation.starts == 2


def test_a_release_past_its_deadline_or_its_starts_goes_back(config: Path) -> None:
    probation = on_probation(config, deadline_at=NOW - 1)
    plan = probation_gate(config, NOW)
    assert plan is not None and plan.rollback is not None
    assert plan.rollback.wheel == probation.wheel and plan.reason == "rollback to 0.0.1"
    on_probation(config, starts=PROBATION_STARTS)  # a crash loop under systemd
    assert probation_gate(config, NOW) is not None


def test_an_install_cut_short_is_healed_and_stale_records_dropped(config: Path) -> None:
    write_probation(config, Probation(__version__, "99.0.0", "/kept.whl", 0.0))
    plan = probation_gate(config, NOW)
    assert plan is not None and plan.rollback is not None
    assert plan.reason == "heal an interrupted install of 99.0.0"
    write_probation(config, Probation("0.0.1", "0.0.2", "/kept.whl", 0.0))
    assert probation_gate(config, NOW) is None
    assert read_any_probation(config) is None


def test_the_gate_leaves_a_running_supervisors_update_alone(config: Path) -> None:
    write_probation(config, Probation(__version__, "99.0.0", "/kept.whl", 0.0))
    lock = hold_instance_lock(config)
    try:
        assert probation_gate(config, NOW) is None  # it is installing right now
    finally:
        lock.release()
    assert read_any_probation(config) is not None


def test_a_failed_start_on_probation_asks_for_the_rollback(config: Path) -> None:
    assert failed_probation(config, 4) is None  # not on probation
    on_probation(config)
    assert failed_probation(config, 0) is None  # a requested stop keeps the probation
    plan = failed_probation(config, 4)
    assert plan is not None and plan.reason == "rollback to 0.0.1 (exit 4)"
    with rollback_if_start_fails(config):
        raise ConfigError("the new release refuses this config")
    plan = pending_reexec()
    assert plan is not None and plan.rollback is not None
    assert pending_reexec() is None  # taken once
    with pytest.raises(AnotherSupervisorRunning), rollback_if_start_fails(config):
        raise AnotherSupervisorRunning(config, 4242)


def test_a_stop_signal_cancels_a_pending_re_execution(config: Path) -> None:
    request_reexec(Reexec("update to 9.9.9"))
    cancel_reexec()
    assert pending_reexec() is None
