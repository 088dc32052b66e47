"""One host generation's watchers, raced: the first verdict ends the generation.

Three watchers run under one task group: the process exit (seen directly, not by a
timeout), the inbox (every message handled in arrival order) and the watchdog tick. Each
hands what it saw to the slot's callbacks, which ask the pure slot core; the first that
returns a verdict cancels the others. No decision is taken here.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from supervisor.pool.host_process import ExitInfo, HostProcess
from supervisor.pool.ipc_router import Inbound
from supervisor.pool.verdict import LossCause, Verdict


async def _next_inbound(inbox: MemoryObjectReceiveStream[Inbound]) -> Inbound | None:
    """The next message, or None once the inbox is closed. Messages already queued are
    taken without a checkpoint each: a job's progress, heartbeat and result come in bursts."""
    try:
        return inbox.receive_nowait()
    except anyio.WouldBlock:
        pass
    except anyio.EndOfStream:
        return None
    try:
        return await inbox.receive()
    except anyio.EndOfStream:
        return None


async def first_verdict(
    host: HostProcess,
    inbox: MemoryObjectReceiveStream[Inbound],
    *,
    on_message: Callable[[Inbound], Verdict | None],
    on_tick: Callable[[], Verdict | None],
    on_exit: Callable[[ExitInfo], Verdict],
    tick_s: float,
) -> Verdict:
    verdicts: list[Verdict] = []

    async with anyio.create_task_group() as tg:

        def decide(verdict: Verdict) -> None:
            if not verdicts:
                verdicts.append(verdict)
            tg.cancel_scope.cancel()

        async def exit_watcher() -> None:
            await host.exited.wait()
            assert host.exit is not None
            decide(on_exit(host.exit))

        async def inbox_watcher() -> None:
            while (item := await _next_inbound(inbox)) is not None:
                verdict = on_message(item)
                if verdict is not None:
                    decide(verdict)
                    return

        async def watchdog() -> None:
            while True:
                await anyio.sleep(tick_s)
                verdict = on_tick()
                if verdict is not None:
                    decide(verdict)
                    return

        tg.start_soon(exit_watcher)
        tg.start_soon(inbox_watcher)
        tg.start_soon(watchdog)
    return verdicts[0] if verdicts else Verdict(LossCause.EXIT, "inbox closed")
