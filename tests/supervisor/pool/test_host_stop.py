"""Stopping a host never hangs, even when its watcher was cancelled (forced shutdown)."""

from __future__ import annotations

import sys

import anyio
import pytest

from supervisor.pool.host_process import HostProcess
from supervisor.pool.slot_spec import SlotSpec

pytestmark = pytest.mark.anyio


async def test_stop_returns_after_watch_was_cancelled() -> None:
    process = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(0.3)"])
    host = HostProcess(process, "t.1", "token", SlotSpec("synthetic", None, 0))
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.watch, lambda stream, line: None)
        await anyio.sleep(0)  # let watch start, then cancel it as a second signal would
        tg.cancel_scope.cancel()
    assert host.exit is None
    with anyio.fail_after(10):
        info = await host.stop(None, grace_s=1.0, term_grace_s=1.0)
    assert info.returncode in (0, -15, -9)
    assert host.exited.is_set()
