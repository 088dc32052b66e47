"""Fault injection for the synthetic engine: the misbehaviour the pool's reliability tests need.

Two sources select a fault. Per job, the model id of a synthetic job (``FaultModel``): the
process crashes, dies by a signal, freezes, runs slowly, downloads slowly or stalls its
download, leaks memory or fails the job; on a simulated GPU (``engines.synthetic_vram``,
which acts on the last two) it also runs out of GPU memory or leaks the model's GPU memory
at the next unload. Model ids select faults only when the host runs with
``STUDIO_WORKER_FAULTS=1`` in its environment (which it inherits from the supervisor);
otherwise they are ordinary synthetic models, so a studio cannot crash a production
worker's hosts by naming a model. Per process, an option string given to the host
(``parse_fault_options``, for tests and drills, never from a studio): a slow or crashing
start, the slow-job and download lengths, the leak size, a crash on the (N+1)-th job, and a
false report of the compute device. This module only misbehaves when asked; it never
touches the IPC channel and knows nothing of the host loop beyond the two hooks
``apply_start_faults`` and ``apply_job_fault``. POSIX only.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn, assert_never

from engines.base import JobContext
from engines.errors import EngineError
from protocol.tasks import prompt_for

CRASH_EXIT_CODE: Final = 3  # synthetic-crash and crash-after
START_CRASH_EXIT_CODE: Final = 4  # crash-on-start
DEFAULT_SLOW_JOB_S: Final = 30.0
DEFAULT_DOWNLOAD_S: Final = 2.0
DEFAULT_LEAK_MB_PER_JOB: Final = 64
SLOW_PROGRESS_INTERVAL_S: Final = 0.2
DOWNLOAD_PROGRESS_INTERVAL_S: Final = 0.1  # as engines.progress_throttle paces real ones
DOWNLOAD_FILE: Final = "synthetic-model.bin"  # the file name its progress reports carry
_MIB: Final = 1 << 20
FAULTS_ENV: Final = "STUDIO_WORKER_FAULTS"  # "1": model ids select faults


def model_faults_enabled(environ: Mapping[str, str]) -> bool:
    """Whether fault model ids act in a process with this environment."""
    return environ.get(FAULTS_ENV) == "1"


class FaultModel(enum.StrEnum):
    """Model ids of synthetic jobs that trigger a fault instead of (or before) the output."""

    CRASH = "synthetic-crash"  # os._exit(3) mid-job
    SEGV = "synthetic-segv"  # dies by SIGSEGV (a real null read)
    ABORT = "synthetic-abort"  # os.abort(): dies by SIGABRT
    HANG = "synthetic-hang"  # freezes every thread: holds the GIL in a C call forever
    SLOW = "synthetic-slow"  # takes slow_job_s seconds, progress every 0.2 s, cancellable
    DOWNLOAD = "synthetic-download"  # "downloads" for download_s seconds, then generates
    DOWNLOAD_STALL = "synthetic-download-stall"  # starts a download that never gets a byte
    LEAK = "synthetic-leak"  # keeps leak_mb_per_job MiB of touched memory, then succeeds
    FAIL = "synthetic-fail"  # raises a retryable EngineError
    OOM = "synthetic-oom"  # after the model load, generation fails: the GPU out of memory
    NOFREE = "synthetic-nofree"  # succeeds; the next unload frees nothing on the sim GPU


@dataclass(frozen=True)
class FaultOptions:
    """Per-process faults; the defaults inject nothing at start and size the per-job faults."""

    slow_start_s: float = 0.0
    crash_on_start: bool = False
    slow_job_s: float = DEFAULT_SLOW_JOB_S
    download_s: float = DEFAULT_DOWNLOAD_S
    leak_mb_per_job: int = DEFAULT_LEAK_MB_PER_JOB
    crash_after: int | None = None  # exit with CRASH_EXIT_CODE when starting job N+1
    backend_cpu: bool = False  # Ready says the CPU even on a simulated GPU
    wrong_device: bool = False  # Ready names a made-up GPU UUID instead of the pinned one
    # Model ids select faults (``FaultModel``): only with STUDIO_WORKER_FAULTS=1, never from
    # the option string (``SyntheticEngine`` sets it from the host's environment).
    model_ids: bool = False


# Option key -> FaultOptions field, by the kind of value the option takes.
_FLAG_OPTIONS: Final = {
    "crash-on-start": "crash_on_start",
    "backend-cpu": "backend_cpu",
    "wrong-device": "wrong_device",
}
_SECONDS_OPTIONS: Final = {
    "slow-start": "slow_start_s",
    "slow-job": "slow_job_s",
    "download": "download_s",
}
_COUNT_OPTIONS: Final = {"leak-mb": "leak_mb_per_job", "crash-after": "crash_after"}
_OPTION_KEYS: Final = (*_SECONDS_OPTIONS, *_FLAG_OPTIONS, *_COUNT_OPTIONS)

# Memory kept alive by synthetic-leak jobs for the life of the process, on purpose.
_LEAKED: list[bytes] = []


def parse_fault_options(text: str) -> FaultOptions:
    """Parse ``"slow-start=2.5,crash-on-start,slow-job=5,leak-mb=32,crash-after=2"`` (and
    ``download=S``, the flags ``backend-cpu``, ``wrong-device``).

    Items are comma-separated and may be given in any order; blank text gives the defaults.
    Raises ``ValueError`` naming the item for an unknown or repeated key, a missing, extra or
    malformed value, or a negative or non-finite number.
    """
    fields: dict[str, Any] = {}
    seen: set[str] = set()
    for raw_item in text.split(","):
        item = raw_item.strip()
        if not item:
            continue
        key, has_value, value = (part.strip() for part in item.partition("="))
        if key not in _OPTION_KEYS:
            raise ValueError(f"unknown fault option {key!r} (known: {', '.join(_OPTION_KEYS)})")
        if key in seen:
            raise ValueError(f"fault option {key!r} given twice")
        seen.add(key)
        if key in _FLAG_OPTIONS:
            if has_value:
                raise ValueError(f"fault option {key!r} takes no value, got {item!r}")
            fields[_FLAG_OPTIONS[key]] = True
        elif not value:
            raise ValueError(f"fault option {key!r} needs a value ({key}=N)")
        elif key in _SECONDS_OPTIONS:
            fields[_SECONDS_OPTIONS[key]] = _parse_seconds(key, value)
        else:
            fields[_COUNT_OPTIONS[key]] = _parse_count(key, value)
    return FaultOptions(**fields)


def _parse_seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"fault option {key!r} needs seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"fault option {key!r} needs finite seconds >= 0, got {value!r}")
    return seconds


def _parse_count(key: str, value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"fault option {key!r} needs a whole number, got {value!r}") from None
    if count < 0:
        raise ValueError(f"fault option {key!r} needs a number >= 0, got {value!r}")
    return count


def apply_start_faults(opts: FaultOptions) -> None:
    """Called by the host before it reports ready: sleep ``slow_start_s``, then maybe exit 4."""
    if opts.slow_start_s > 0:
        time.sleep(opts.slow_start_s)
    if opts.crash_on_start:
        _exit_now(START_CRASH_EXIT_CODE)


def job_fault(model: str, opts: FaultOptions) -> FaultModel | None:
    """The fault a job's model id asks for; None for any other id, and for every id when
    model ids do not select faults in this process (``opts.model_ids``)."""
    if not opts.model_ids:
        return None
    try:
        return FaultModel(model)
    except ValueError:
        return None


_DEATHS: Final = frozenset({FaultModel.CRASH, FaultModel.SEGV, FaultModel.ABORT})


def apply_job_fault(model: str, ctx: JobContext, opts: FaultOptions, jobs_started: int) -> None:
    """Called by the engine before it generates; ``jobs_started`` counts earlier jobs.

    Kills or freezes the process, or raises ``EngineError``, when the job asks for it;
    for ``synthetic-slow``, ``synthetic-download`` and ``synthetic-leak`` it does its part
    and returns, and the engine then produces the normal output. Any other model id (and
    any id at all unless ``opts.model_ids``) returns at once.
    """
    if opts.crash_after is not None and jobs_started >= opts.crash_after:
        ctx.log("warn", f"fault: crash-after={opts.crash_after}, exiting with {CRASH_EXIT_CODE}")
        _exit_now(CRASH_EXIT_CODE)
    fault = job_fault(model, opts)
    if fault is None:
        return
    ctx.log("warn", f"fault: {fault.value} requested by job {ctx.job_id}")
    if fault in _DEATHS:
        # Verbose engines print the prompt they are working on; a death leaves it in the
        # stderr tail the supervisor reports (and telemetry must scrub).
        print(f"fault: dying while generating: {prompt_for(ctx.task)}", file=sys.stderr, flush=True)
    match fault:
        case FaultModel.CRASH:
            _exit_now(CRASH_EXIT_CODE)
        case FaultModel.SEGV:
            _segfault()
        case FaultModel.ABORT:
            _disable_core_dumps()
            os.abort()
        case FaultModel.HANG:
            _hang_forever()
        case FaultModel.SLOW:
            run_slowly(ctx, opts.slow_job_s)
        case FaultModel.DOWNLOAD:
            download_slowly(ctx, opts.download_s)
        case FaultModel.DOWNLOAD_STALL:
            stall_download(ctx)
        case FaultModel.LEAK:
            held_mb = leak_memory(opts.leak_mb_per_job)
            ctx.log("warn", f"fault: this process now holds {held_mb} MiB of leaked memory")
        case FaultModel.FAIL:
            raise EngineError("synthetic failure requested")
        case FaultModel.OOM | FaultModel.NOFREE:
            pass  # after the model load: engines.synthetic_vram
        case _:
            assert_never(fault)


def run_slowly(ctx: JobContext, seconds: float) -> None:
    """Take ``seconds``, reporting progress every ~0.2 s; raise ``EngineError`` when cancelled."""
    total = max(1, math.ceil(seconds / SLOW_PROGRESS_INTERVAL_S))
    deadline = time.monotonic() + seconds
    step = 0
    while (left_s := deadline - time.monotonic()) > 0:
        if ctx.cancelled.wait(min(SLOW_PROGRESS_INTERVAL_S, left_s)):
            raise EngineError("cancelled")
        step = min(step + 1, total)
        ctx.progress("generating", step, total, "")


def download_slowly(ctx: JobContext, seconds: float) -> None:
    """Report a download that takes ``seconds``: bytes every ~0.1 s, as a real one does;
    raise ``EngineError`` when cancelled."""
    chunks = max(1, math.ceil(seconds / DOWNLOAD_PROGRESS_INTERVAL_S))
    total = chunks * _MIB
    deadline = time.monotonic() + seconds
    done = 0
    ctx.progress("downloading", done, total, DOWNLOAD_FILE)
    while (left_s := deadline - time.monotonic()) > 0:
        if ctx.cancelled.wait(min(DOWNLOAD_PROGRESS_INTERVAL_S, left_s)):
            raise EngineError("cancelled")
        done = min(done + _MIB, total)
        ctx.progress("downloading", done, total, DOWNLOAD_FILE)
    if done != total:
        ctx.progress("downloading", total, total, DOWNLOAD_FILE)


def stall_download(ctx: JobContext) -> NoReturn:
    """Start a download and never receive a byte (a dead link the host's own read timeout
    does not catch); raise ``EngineError`` when cancelled."""
    ctx.progress("downloading", 0, _MIB, DOWNLOAD_FILE)
    ctx.cancelled.wait()
    raise EngineError("cancelled")


def leak_memory(mb: int) -> int:
    """Keep ``mb`` MiB of written (resident) memory until the process exits; return MiB held."""
    # A one-byte repeat is a memset, so every page is touched and counts towards RSS.
    _LEAKED.append(b"\xa5" * (mb * _MIB))
    return sum(len(block) for block in _LEAKED) // _MIB


def _exit_now(code: int) -> NoReturn:
    """Exit without cleanup (no atexit, no finally), like a crash; logs already written stay."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _disable_core_dumps() -> None:
    # A requested crash must not leave a core file behind (or stall while one is written).
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _segfault() -> NoReturn:
    """Die by a real SIGSEGV from this thread (faulthandler, if enabled, re-raises it)."""
    _disable_core_dumps()
    # Address 1 lies in the zero page, which is never mapped. (Address 0 itself does not
    # fault: ``string_at(0, n)`` returns n uninitialised bytes instead of reading.)
    ctypes.string_at(1, 1)
    raise AssertionError("reading the zero page did not fault")  # pragma: no cover


def _hang_forever() -> NoReturn:
    """Freeze the whole process the way a wedged native call does.

    ``PyDLL`` calls keep the GIL, so no other Python thread runs again (heartbeats stop).
    Blocking every signal in this thread means ``pause`` never returns: signals go to the
    other threads, where Python handlers cannot run without the GIL, so only a signal whose
    default action kills (SIGKILL, or SIGTERM when no handler is installed) ends the process.
    In a single-threaded process such a SIGTERM stays pending, and only SIGKILL works.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    libc = ctypes.PyDLL(None)
    while True:
        libc.pause()
