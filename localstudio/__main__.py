"""``python -m localstudio``: serve the local studio until SIGINT/SIGTERM.

The first line on stdout is ``local studio listening on <base url> (...)``; ``supervisor
start --local`` reads it to learn the port. ``supervisor studio serve`` runs the same code.
``--one-offer-per-worker`` offers like the cloud studio: one job at a time per worker,
whatever ``maxConcurrentJobs`` it advertises.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from pathlib import Path

import anyio

from localstudio.selection import OfferRule
from localstudio.server import DEFAULT_HEARTBEAT_TIMEOUT_S, LocalStudio

ADMIN_TOKEN_ENV = "STUDIO_LOCAL_ADMIN_TOKEN"
READY_PREFIX = "local studio listening on "


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
) -> None:
    studio = LocalStudio(
        data_dir,
        auto_approve=auto_approve,
        heartbeat_timeout_s=heartbeat_timeout_s,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None,
        offer_rule=offer_rule,
    )
    async with anyio.create_task_group() as tg:
        url = await tg.start(studio.serve, host, port)
        mode = "; one offer per worker" if offer_rule is OfferRule.ONE_PER_WORKER else ""
        print(f"{READY_PREFIX}{url} (data in {data_dir}{mode})", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


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
    args = p.parse_args(argv)
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
        ),
        backend="asyncio",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
