"""Keep the owned local studio up for as long as the supervisor runs.

``StudioKeeper.serve`` is a task of the supervisor's root task group: it stops a stale
studio left by a crash, starts one and reports its URL through ``task_status.started``
(a studio that cannot start is a LocalStudioError raised from ``tg.start``, before any
engine host exists). From then on, a studio that exits is started again on the same port
(the config holds its URL) after a backoff, so the session's reconnects find a studio
again instead of retrying against nothing; a studio that stayed up ``STABLE_S`` starts the
backoff over. Cancelling the task stops the studio (SIGTERM, grace, SIGKILL), shielded.
It never touches the config or the session.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Final

import anyio
from anyio.abc import TaskStatus

from supervisor.errors import LocalStudioError
from supervisor.owned_studio.launch import LocalStudioSpec, StudioProcess, launch_studio
from supervisor.owned_studio.stale import stop_stale_studio
from supervisor.pool.policies import backoff_s

log = logging.getLogger("supervisor.local")

RESTART_BASE_S: Final = 0.5
RESTART_MAX_S: Final = 30.0
STABLE_S: Final = 60.0


def next_restart_attempt(attempt: int, uptime_s: float) -> int:
    """The backoff attempt for a studio that exited after ``uptime_s``: a studio that ran a
    while was healthy, so its exit starts over at 1; a quick exit counts on."""
    return 1 if uptime_s >= STABLE_S else attempt + 1


class StudioKeeper:
    def __init__(self, data_dir: Path, spec: LocalStudioSpec) -> None:
        self.data_dir = data_dir
        self.spec = spec
        self.current: StudioProcess | None = None
        self.restarts = 0

    async def serve(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await stop_stale_studio(self.data_dir)
            studio = self.current = await launch_studio(self.data_dir, self.spec)
            # A restart must come back where the config points, also after `--local-port 0`.
            self.spec = LocalStudioSpec(studio.port, self.spec.one_offer_per_worker)
            log.info(
                "local studio running at %s pid=%d data=%s", studio.url, studio.pid, self.data_dir
            )
            task_status.started(studio.url)
            await self._keep_up(studio)
        finally:
            if self.current is not None:
                await self.current.stop()

    async def _keep_up(self, studio: StudioProcess) -> None:
        attempt = 0
        while True:
            exited = await studio.wait()
            self.current = None
            attempt = next_restart_attempt(attempt, time.monotonic() - studio.started)
            delay = backoff_s(attempt, RESTART_BASE_S, RESTART_MAX_S)
            log.warning(
                "local studio pid=%d exited (%s); restarting it in %.1f s",
                studio.pid,
                exited.describe(),
                delay,
            )
            studio, attempt = await self._restart(attempt)

    async def _restart(self, attempt: int) -> tuple[StudioProcess, int]:
        """Start the studio again after the backoff of ``attempt``, and again after each
        failure (with the next backoff) until one starts; returns it and the attempt."""
        while True:
            await anyio.sleep(backoff_s(attempt, RESTART_BASE_S, RESTART_MAX_S))
            try:
                studio = self.current = await launch_studio(self.data_dir, self.spec)
            except LocalStudioError as exc:
                attempt += 1
                log.error(
                    "the local studio did not restart: %s; trying again in %.1f s",
                    exc,
                    backoff_s(attempt, RESTART_BASE_S, RESTART_MAX_S),
                )
                continue
            self.restarts += 1
            log.info("local studio restarted at %s pid=%d", studio.url, studio.pid)
            return studio, attempt
