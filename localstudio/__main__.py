"""``python -m localstudio``: serve the local studio until SIGINT/SIGTERM.

The first line on stdout is ``local studio listening on <base url> (...)``; ``supervisor
start --local`` reads it to learn the port. ``supervisor studio serve`` runs the same code.
``--one-offer-per-worker`` offers like the cloud studio: one job at a time per worker,
whatever ``maxConcurrentJobs`` it advertises. ``--parent-pid PID`` (given by ``supervisor
start --local``) ties the studio to that process: it stops when that one dies, ``kill -9``
included (``parent_watch``), and the pid is written into the data dir's lock.

As a process, a refusal is one ``error: <message>`` line on stderr and an exit status the
supervisor tells apart without parsing text: ``EXIT_PORT_TAKEN`` (the port is held),
``EXIT_DATA_DIR_BUSY`` (another studio serves the data dir), ``EXIT_REFUSED`` (any other
refusal, e.g. unsafe settings). ``main`` itself raises them (``supervisor studio serve``
runs it in-process and reports them its own way).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Final

import anyio

from localstudio.errors import DataDirBusyError, LocalStudioError, StudioStartupError
from localstudio.parent_watch import exit_with_parent, wait_for_parent_exit
from localstudio.selection import OfferRule
from localstudio.server import DEFAULT_HEARTBEAT_TIMEOUT_S, LocalStudio

ADMIN_TOKEN_ENV = "STUDIO_LOCAL_ADMIN_TOKEN"
READY_PREFIX = "local studio listening on "
EXIT_REFUSED: Final = 2
EXIT_PORT_TAKEN: Final = 3
EXIT_DATA_DIR_BUSY: Final = 4

log = logging.getLogger("localstudio")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "minis-studio-worker" / "local-studio"


async def serve_until_signalled(
    data_dir: Path,
    host: str,
    port: int,
    *,
    auto_approve: bool,
    heartbeat_timeout_s: float,
    offer_rule: OfferRule = OfferRule.PER_CAPACITY,
    parent_pid: int | None = None,
) -> None:
    studio = LocalStudio(
        data_dir,
        auto_approve=auto_approve,
        heartbeat_timeout_s=heartbeat_timeout_s,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
        offer_rule=offer_rule,
        parent_pid=parent_pid,
    )
    # The receiver stays open until the studio has stopped: a second signal must not kill it
    # half-way through closing its database. (One death of a multi-threaded parent can send
    # PR_SET_PDEATHSIG several times, once per parent thread the kernel re-parents it to.)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            url = await tg.start(studio.serve, host, port)
            mode = "; one offer per worker" if offer_rule is OfferRule.ONE_PER_WORKER else ""
            print(f"{READY_PREFIX}{url} (data in {data_dir}{mode})", flush=True)
            if parent_pid is not None:
                tg.start_soon(_stop_when_parent_exits, parent_pid, tg.cancel_scope)
            async for _ in signals:
                break
            tg.cancel_scope.cancel()


async def _stop_when_parent_exits(parent_pid: int, scope: anyio.CancelScope) -> None:
    await wait_for_parent_exit(parent_pid)
    log.warning("the process that started this studio (pid %d) is gone; stopping", parent_pid)
    scope.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localstudio", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9790)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--auto-approve", action="store_true")
    p.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_HEARTBEAT_TIMEOUT_S)
    p.add_argument(
        "--one-offer-per-worker",
        action="store_true",
        help="offer each worker one job at a time, like the cloud studio (default: up to "
        "the maxConcurrentJobs it advertises)",
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="stop when this process (the supervisor that started the studio) exits",
    )
    args = p.parse_args(argv)
    if args.parent_pid is not None and not exit_with_parent(args.parent_pid):
        print(f"the parent process {args.parent_pid} is gone; not starting", file=sys.stderr)
        return 0
    rule = OfferRule.ONE_PER_WORKER if args.one_offer_per_worker else OfferRule.PER_CAPACITY
    anyio.run(
        functools.partial(
            serve_until_signalled,
            args.data_dir,
            args.host,
            args.port,
            auto_approve=args.auto_approve,
            heartbeat_timeout_s=args.heartbeat_timeout,
            offer_rule=rule,
            parent_pid=args.parent_pid,
        ),
        backend="asyncio",
    )
    return 0


def run_process(argv: list[str] | None = None) -> int:
    """``main`` as a process: a refusal is one ``error:`` line and its exit status."""
    try:
        return main(argv)
    except (LocalStudioError, ExceptionGroup) as exc:
        refusal = _first_refusal(exc)
        if refusal is None:
            raise
        print(f"error: {' '.join(str(refusal).splitlines())}", file=sys.stderr, flush=True)
        match refusal:
            case StudioStartupError():
                return EXIT_PORT_TAKEN
            case DataDirBusyError():
                return EXIT_DATA_DIR_BUSY
            case _:
                return EXIT_REFUSED


def _first_refusal(exc: BaseException) -> LocalStudioError | None:
    """The studio's own refusal, alone or inside the task group's ExceptionGroup."""
    if isinstance(exc, LocalStudioError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if found := _first_refusal(inner):
                return found
    return None


if __name__ == "__main__":
    sys.exit(run_process())
