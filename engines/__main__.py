"""``python -m engines``: run one engine host.

The supervisor starts it (spawn, never fork) with the slot's arguments and the per-spawn
token in ``STUDIO_WORKER_HOST_TOKEN``; a developer can start one by hand against a
supervisor's socket to debug a backend. Exit codes: 0 after ``Shutdown`` or when the
supervisor is gone, 2 for bad arguments or a backend that failed to load.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from engines.parent_watch import die_with_parent

TOKEN_ENV = "STUDIO_WORKER_HOST_TOKEN"


def _at_least_one(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _at_least_zero(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engines", description=__doc__)
    p.add_argument("--engine", required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--endpoint", required=True, help="the supervisor's ZeroMQ ROUTER endpoint")
    p.add_argument("--models-root", type=Path, required=True)
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--faults", default="", help="synthetic fault options, e.g. slow-start=2")
    p.add_argument(
        "--threads",
        type=_at_least_one,
        default=None,
        help="CPU threads for the inference library (default: every available core)",
    )
    p.add_argument(
        "--ask-before-load",
        action="store_true",
        help="send LoadRequest and wait for the supervisor's LoadGrant before every model load",
    )
    p.add_argument(
        "--max-warm-models",
        type=_at_least_one,
        default=1,
        help="models kept loaded at once; the least recently used is unloaded first",
    )
    p.add_argument(
        "--models-max-bytes",
        type=_at_least_zero,
        default=0,
        help="disk budget of --models-root in bytes: downloads evict the least recently used "
        "files no host holds to stay within it (0: no budget, nothing is ever evicted)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # Ctrl-C in the supervisor's terminal must not kill a job mid-flight: the supervisor
    # decides when a host stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(args.parent_pid)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(levelname)s engine={args.engine} slot={args.slot} %(message)s",
    )
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        print(f"{TOKEN_ENV} is not set; refusing to start", file=sys.stderr)
        return 2

    from engines.host import EngineHost
    from engines.host_options import HostOptions
    from engines.loader import create_engine
    from engines.model_cache import set_host_budget

    set_host_budget(args.models_max_bytes)

    if args.engine == "synthetic":
        from engines.faults import apply_start_faults, parse_fault_options

        apply_start_faults(parse_fault_options(args.faults))
    try:
        engine = create_engine(
            args.engine, args.models_root, args.faults, args.threads, args.max_warm_models
        )
    except Exception as exc:
        print(
            f"engine `{args.engine}` failed to load: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 2
    options = HostOptions(
        engine=args.engine,
        slot=args.slot,
        endpoint=args.endpoint,
        token=token,
        models_root=args.models_root,
        parent_pid=args.parent_pid,
        heartbeat_s=args.heartbeat_s,
        ask_before_load=args.ask_before_load,
    )
    code = EngineHost(options, engine).serve()
    engine.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
