"""The updater inside a running supervisor: every ``auto_update_interval_secs``, once no job
runs, ask the index; report a newer release (log line, ``status``, metric); with
``self_install`` on an installation it may change, drain, keep the running release as a
wheel, install, check the new ``supervisor --version``, and ask for a re-execution. A new
release on probation is watched here too: no studio ``welcome`` in time means a rollback.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, requires
from pathlib import Path
from typing import Final

import anyio

from supervisor import __version__
from supervisor.config import WorkerConfig
from supervisor.errors import UpdateError
from supervisor.lanes.lane import Lane
from supervisor.updates.index import Release, install_release, install_wheel_offline
from supervisor.updates.index import newest_release as ask_index
from supervisor.updates.installation import read_facts, refusal
from supervisor.updates.keep import keep_installed_wheel
from supervisor.updates.restart import Reexec, request_reexec
from supervisor.updates.state import (
    STATUS,
    Probation,
    end_probation,
    read_probation,
    recently_rolled_back,
    updates_dir,
    write_probation,
)
from supervisor.updates.versions import (
    PACKAGE,
    installed_extras,
    is_newer,
    pins_moved,
    rebuild_command,
)

log = logging.getLogger("supervisor.update")

IDLE_POLL_S: Final = 1.0
VERSION_CHECK_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True)
class Verdict:
    """What to do about the newest release: nothing (``note`` says why) or install."""

    install: bool
    note: str | None


def judge(
    release: Release, cfg: WorkerConfig, config_path: Path, installed_requires: list[str]
) -> Verdict:
    """Pure but for the facts it reads: may ``release`` be installed here, now?"""
    if not is_newer(release.version, __version__, prerelease=cfg.auto_update_prerelease):
        return Verdict(False, None)
    if recently_rolled_back(config_path, release.version, time.time()):
        return Verdict(False, f"{release.version} was rolled back recently; not retried today")
    moved = pins_moved(installed_requires, release.requires)
    if moved:
        return Verdict(
            False,
            f"update needs an engine rebuild ({', '.join(moved)} pinned differently): run "
            f"{rebuild_command(sys.executable, release.version)}",
        )
    if not cfg.self_install:
        return Verdict(False, "report only (self_install = false)")
    reason = refusal(read_facts())
    if reason is not None:
        return Verdict(False, f"report only: {reason}")
    return Verdict(True, None)


def _is_installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


def _run_new(args: list[str], what: str, expect: str) -> None:
    exe = Path(sys.executable).parent / "supervisor"
    try:
        done = subprocess.run(
            [str(exe), *args],
            capture_output=True,
            text=True,
            timeout=VERSION_CHECK_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError(f"the new `{what}` did not run: {exc}") from exc
    if done.returncode != 0 or expect not in done.stdout:
        last = (done.stderr.strip().splitlines() or [done.stdout.strip()])[-1]
        raise UpdateError(f"the new `{what}` failed (exit {done.returncode}): {last}")


def check_new_version(version: str) -> None:
    """``supervisor --version`` of the freshly installed release runs and names it, and it
    accepts this process's own arguments (a renamed option would stop the re-execution)."""
    _run_new(["--version"], "supervisor --version", version)
    _run_new([*sys.argv[1:], "--help"], "supervisor ... --help with the same arguments", "")


class UpdateWatch:
    def __init__(
        self,
        cfg: WorkerConfig,
        config_path: Path,
        lanes: list[Lane],
        stop: anyio.Event,
        on_stop: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.lanes = lanes
        self.stop = stop
        self.on_stop = on_stop  # names why the supervisor stops (its summary line)
        STATUS.checking = cfg.auto_update_enabled

    async def run(self) -> None:
        probation = read_probation(self.config_path, __version__)
        async with anyio.create_task_group() as tg:
            if probation is not None:
                tg.start_soon(self._watch_probation, probation)
            if self.cfg.auto_update_enabled:
                tg.start_soon(self._check_forever)

    # --- probation ---------------------------------------------------------------------------

    def _welcomed(self) -> bool:
        return any(lane.state.sessions_welcomed > 0 for lane in self.lanes)

    async def _watch_probation(self, probation: Probation) -> None:
        log.info(
            "running %s on probation: it must reach the studio within %.0f s or %s comes back",
            probation.to_version,
            probation.deadline_s,
            probation.from_version,
        )
        with anyio.move_on_after(max(0.0, probation.deadline_at - time.time())):
            while not self._welcomed():  # noqa: ASYNC110 -- lanes signal no welcome event
                await anyio.sleep(0.2)
            end_probation(self.config_path)
            log.info("update to %s confirmed: the studio welcomed it", probation.to_version)
            return
        log.error(
            "%s reached no studio welcome within %.0f s; rolling back to %s",
            probation.to_version,
            probation.deadline_s,
            probation.from_version,
        )
        self._restart(f"rollback to {probation.from_version}", probation)

    # --- the periodic check ------------------------------------------------------------------

    async def _check_forever(self) -> None:
        interval = max(1.0, float(self.cfg.auto_update_interval_secs))
        while not self.stop.is_set():
            await anyio.sleep(interval)
            while self._busy():  # noqa: ASYNC110 -- never mid-job; nothing signals "idle"
                await anyio.sleep(IDLE_POLL_S)
            if self.stop.is_set():
                return
            try:
                await self.check_once()
            except Exception:  # an updater bug must not stop the worker; it tries again
                log.exception("update check failed unexpectedly")
                self._set_draining(False)

    async def check_once(self) -> None:
        try:
            release = await anyio.to_thread.run_sync(
                lambda: ask_index(sys.executable, prerelease=self.cfg.auto_update_prerelease),
                abandon_on_cancel=True,  # a stop does not wait for a slow index
            )
        except UpdateError as exc:
            STATUS.error = str(exc)
            log.warning("%s (next try in %d s)", exc, self.cfg.auto_update_interval_secs)
            return
        verdict = judge(release, self.cfg, self.config_path, requires(PACKAGE) or [])
        newer = is_newer(release.version, __version__, prerelease=self.cfg.auto_update_prerelease)
        first_sight = STATUS.newest != release.version or STATUS.note != verdict.note
        STATUS.newest, STATUS.available, STATUS.error = release.version, newer, None
        STATUS.checked_at, STATUS.note = time.time(), verdict.note
        if not newer:
            log.debug("up to date: %s %s is the newest", PACKAGE, __version__)
            return
        if first_sight:
            log.info(
                "update available: %s %s (running %s)%s",
                PACKAGE,
                release.version,
                __version__,
                f"; {verdict.note}" if verdict.note else "",
            )
        if verdict.install:
            await self._install(release)

    # --- installing --------------------------------------------------------------------------

    def _busy(self) -> bool:
        """A job runs, or is on its way: accepted (a slot reserved) or waiting to retry."""
        if any(lane.state.jobs for lane in self.lanes):
            return True
        slots = {id(s): s for lane in self.lanes for s in lane.pool.slots}.values()
        return any(s.core.reserved_for or s.core.job or s.core.held_for for s in slots)

    def _set_draining(self, on: bool) -> None:
        for lane in self.lanes:
            lane.state.shutting_down = on
            lane.state.nudge()

    async def _install(self, release: Release) -> None:
        log.info(
            "updating to %s: draining (new offers are rejected, running jobs finish)",
            release.version,
        )
        STATUS.note = f"installing {release.version}"
        self._set_draining(True)
        while self._busy() and not self.stop.is_set():  # noqa: ASYNC110
            await anyio.sleep(IDLE_POLL_S)
        if self.stop.is_set():
            return
        # Shielded: a stop waits for the installation to be whole again (the new release
        # proven, or the kept one back) rather than leave it half replaced; pip's own
        # timeouts bound the wait.
        with anyio.CancelScope(shield=True):
            installed = await self._replace(release)
        if installed is None:
            return
        probation_s = float(self.cfg.self_install_probation_s)
        probation = Probation(
            __version__, release.version, str(installed), probation_s, time.time() + probation_s
        )
        write_probation(self.config_path, probation)  # the next start is on probation
        if self.stop.is_set():
            log.info("installed %s; it runs at the next start", release.version)
            return
        self._restart(f"update to {release.version}", None)

    async def _replace(self, release: Release) -> Path | None:
        """Keep, install, prove; the kept wheel once the new release runs, else None."""
        kept: Path | None = None
        try:
            kept = await anyio.to_thread.run_sync(
                keep_installed_wheel, updates_dir(self.config_path) / "kept"
            )
            # Recorded before pip runs: a SIGKILL mid-install is healed at the next start.
            record = Probation(__version__, release.version, str(kept), 0.0)
            write_probation(self.config_path, record)
            extras = installed_extras(requires(PACKAGE) or [], _is_installed)
            await anyio.to_thread.run_sync(install_release, sys.executable, release.version, extras)
            await anyio.to_thread.run_sync(check_new_version, release.version)
        except UpdateError as exc:
            await self._undo(release, kept, exc)
            return None
        log.info("installed %s (kept %s for a rollback)", release.version, kept)
        return kept

    async def _undo(self, release: Release, kept: Path | None, exc: UpdateError) -> None:
        STATUS.error, STATUS.note = str(exc), f"{release.version} failed to install"
        end_probation(self.config_path)
        if kept is not None:
            try:
                await anyio.to_thread.run_sync(install_wheel_offline, sys.executable, str(kept))
            except UpdateError as undo:
                log.error("%s: the installation may be broken; reinstall %s", undo, __version__)
        log.error(
            "update to %s failed: %s; staying on %s (next try in %d s)",
            release.version,
            exc,
            __version__,
            self.cfg.auto_update_interval_secs,
        )
        if not self.stop.is_set():
            self._set_draining(False)

    def _restart(self, reason: str, rollback: Probation | None) -> None:
        request_reexec(Reexec(reason, rollback))
        self.on_stop(reason)
        self.stop.set()
