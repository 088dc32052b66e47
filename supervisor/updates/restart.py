"""The last step of an update or a rollback, once the supervisor has stopped every host and
the local studio: put the kept release back if this is a rollback, then re-execute this
command with the same arguments, in the same process (systemd keeps its main PID)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from supervisor import __version__
from supervisor.errors import AnotherSupervisorRunning, ConfigError, UpdateError
from supervisor.instance_lock import hold_instance_lock
from supervisor.updates.index import install_wheel_offline
from supervisor.updates.state import (
    Probation,
    end_probation,
    read_any_probation,
    read_probation,
    remember_rolled_back,
    write_probation,
)

log = logging.getLogger("supervisor.update")


@dataclass(frozen=True)
class Reexec:
    reason: str
    rollback: Probation | None = None  # put ``rollback.wheel`` back first


_PENDING: list[Reexec] = []


def request_reexec(plan: Reexec) -> None:
    _PENDING[:] = [plan]


def pending_reexec() -> Reexec | None:
    return _PENDING.pop() if _PENDING else None


def cancel_reexec() -> None:
    """An operator's signal wins over an update's restart: the worker stops. A release on
    probation meets its deadline at the next start instead."""
    if _PENDING:
        log.warning("re-execution cancelled (%s): a stop was asked for", _PENDING[0].reason)
    _PENDING.clear()


def probation_gate(config_path: Path, now: float) -> Reexec | None:
    """At start, before anything else: an install cut short (the old release runs, the
    record says it was being replaced) is undone; a release on probation that used up its
    time or its starts (a crash loop under systemd) goes back at once."""
    probation = read_any_probation(config_path)
    if probation is None:
        return None
    try:
        lock = hold_instance_lock(config_path)
    except (AnotherSupervisorRunning, ConfigError):
        return None  # the supervisor that runs owns its update; `start` refuses shortly
    try:
        return _judge_probation(config_path, probation, now)
    finally:
        lock.release()


def _judge_probation(config_path: Path, probation: Probation, now: float) -> Reexec | None:
    if probation.to_version != __version__:
        if probation.from_version != __version__:
            end_probation(config_path)  # about releases that no longer run
            return None
        print(
            f"warning: the install of {probation.to_version} was cut short; "
            f"putting {probation.from_version} back",
            file=sys.stderr,
        )
        return Reexec(f"heal an interrupted install of {probation.to_version}", probation)
    probation = probation.started()
    write_probation(config_path, probation)
    if not probation.expired(now):
        return None
    print(
        f"error: {probation.to_version} reached no studio welcome in time "
        f"({probation.starts - 1} start(s)); rolling back to {probation.from_version}",
        file=sys.stderr,
    )
    return Reexec(f"rollback to {probation.from_version}", probation)


def roll_back(config_path: Path, probation: Probation) -> None:
    """Reinstall the kept wheel, offline, and remember not to retry the release soon."""
    log.warning(
        "rolling back to %s from its kept wheel %s", probation.from_version, probation.wheel
    )
    install_wheel_offline(sys.executable, probation.wheel)
    remember_rolled_back(config_path, probation.to_version)
    end_probation(config_path)


def reexec(config_path: Path, plan: Reexec) -> int:
    """Exec into the installed release; returns (an exit status) only if that failed."""
    try:
        if plan.rollback is not None:
            roll_back(config_path, plan.rollback)
    except UpdateError as exc:
        log.error("%s; the worker stops: reinstall it by hand", exc)
        return 1
    log.info("re-executing: %s", plan.reason)
    logging.shutdown()  # every handler flushed: exec does not run atexit hooks
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:]]
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        print(f"error: cannot re-execute {sys.executable}: {exc}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def rollback_if_start_fails(config_path: Path) -> Iterator[None]:
    """A release on probation that cannot even start (its checks refuse, it raises) goes
    back to the kept one at once, rather than waiting for a welcome that cannot come."""
    try:
        yield
    except Exception as exc:
        probation = read_probation(config_path, __version__)
        if probation is None or isinstance(exc, AnotherSupervisorRunning):
            raise
        print(f"error: {probation.to_version} failed to start: {exc}", file=sys.stderr)
        request_reexec(Reexec(f"rollback to {probation.from_version}", probation))


def failed_probation(config_path: Path, code: int) -> Reexec | None:
    """A release on probation that ended on an error before its welcome goes back."""
    probation = read_probation(config_path, __version__) if code != 0 else None
    if probation is None:
        return None
    return Reexec(f"rollback to {probation.from_version} (exit {code})", probation)
