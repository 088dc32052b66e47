"""Fault injection: option parsing in-process; every fault that ends or freezes the process
in a real child interpreter, judged by its exit status and its output."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from engines.base import BinaryResult, JobContext
from engines.errors import EngineError
from engines.faults import (
    CRASH_EXIT_CODE,
    DOWNLOAD_FILE,
    FAULTS_ENV,
    START_CRASH_EXIT_CODE,
    FaultModel,
    FaultOptions,
    apply_job_fault,
    apply_start_faults,
    parse_fault_options,
)
from engines.synthetic import SyntheticEngine
from protocol.tasks import ImageTask, ModelCliDefaults, ModelSource

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60.0
ProgressCall = tuple[str, int, int, str]

# Shared head of every child script: an engine (faults from FAULTS) and a job factory.
CHILD_PRELUDE = """
import sys, threading
from pathlib import Path
from engines.base import JobContext
from engines.faults import parse_fault_options
from engines.synthetic import SyntheticEngine
from protocol.tasks import ImageTask, ModelCliDefaults, ModelSource

engine = SyntheticEngine(parse_fault_options(FAULTS))

def make_ctx(model):
    source = ModelSource("synthetic", [], ModelCliDefaults(1.0, 1, 512, 512))
    return JobContext("job", model, ImageTask(prompt="p"), source, Path())

def run_on_job_thread(model):
    # The host runs jobs on a job thread, not the main thread.
    worker = threading.Thread(target=engine.run, args=(make_ctx(model),))
    worker.start()
    worker.join()
"""


def child_script(body: str, faults: str = "") -> str:
    return f"FAULTS = {faults!r}\n{CHILD_PRELUDE}\n{textwrap.dedent(body)}"


def run_child(
    body: str,
    faults: str = "",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *extra_args, "-c", child_script(body, faults)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


def make_ctx(model: str, progress: list[ProgressCall] | None = None) -> JobContext:
    source = ModelSource(
        engine="synthetic",
        files=[],
        cli_defaults=ModelCliDefaults(cfg_scale=1.0, steps=1, width=512, height=512),
    )
    ctx = JobContext(
        job_id="job-1",
        model=model,
        task=ImageTask(prompt="p", ext="png"),
        model_source=source,
        models_root=Path(),
    )
    if progress is not None:
        ctx.progress = lambda phase, step, total, message: progress.append(
            (phase, step, total, message)
        )
    return ctx


# --- option parsing ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  ", ",", " , "])
def test_blank_options_are_defaults(text: str) -> None:
    assert parse_fault_options(text) == FaultOptions()
    assert FaultOptions() == FaultOptions(
        slow_start_s=0.0, crash_on_start=False, slow_job_s=30.0, leak_mb_per_job=64
    )
    assert FaultOptions().crash_after is None


def test_all_options_parse() -> None:
    opts = parse_fault_options(
        "slow-start=2.5, crash-on-start,slow-job=5,leak-mb=32,crash-after=2,download=1.5"
    )
    assert opts == FaultOptions(
        slow_start_s=2.5,
        crash_on_start=True,
        slow_job_s=5.0,
        leak_mb_per_job=32,
        crash_after=2,
        download_s=1.5,
    )


def test_device_report_flags_parse() -> None:
    assert parse_fault_options("backend-cpu") == FaultOptions(backend_cpu=True)
    assert parse_fault_options("wrong-device, slow-start=1") == FaultOptions(
        wrong_device=True, slow_start_s=1.0
    )
    with pytest.raises(ValueError, match="'backend-cpu' takes no value"):
        parse_fault_options("backend-cpu=1")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus=1", "'bogus'"),
        ("slow-start=1,explode", "'explode'"),
        ("crash-on-start=1", "'crash-on-start'"),
        ("slow-job=", "'slow-job'"),
        ("slow-job", "'slow-job'"),
        ("slow-job=fast", "'slow-job'"),
        ("slow-start=-1", "'slow-start'"),
        ("slow-start=nan", "'slow-start'"),
        ("slow-job=inf", "'slow-job'"),
        ("leak-mb=1.5", "'leak-mb'"),
        ("leak-mb=-3", "'leak-mb'"),
        ("crash-after=x", "'crash-after'"),
        ("leak-mb=1,leak-mb=2", "'leak-mb'"),
        ("model-ids", "'model-ids'"),  # only the environment turns fault model ids on
    ],
)
def test_bad_options_raise_naming_the_key(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        parse_fault_options(text)


# --- start faults ------------------------------------------------------------------------


def test_default_start_faults_return_at_once() -> None:
    started = time.monotonic()
    apply_start_faults(FaultOptions())
    assert time.monotonic() - started < 1.0


def test_slow_start_delays_ready() -> None:
    started = time.monotonic()
    apply_start_faults(parse_fault_options("slow-start=0.3"))
    assert time.monotonic() - started >= 0.3


def test_crash_on_start_exits_4_after_the_slow_start() -> None:
    proc = run_child(
        """
        import time
        from engines.faults import apply_start_faults
        started = time.monotonic()
        print("starting", flush=True)
        try:
            apply_start_faults(engine.faults)
        finally:
            print("finally ran", time.monotonic() - started, flush=True)
        print("ready", flush=True)
        """,
        faults="slow-start=0.2,crash-on-start",
    )
    assert proc.returncode == START_CRASH_EXIT_CODE == 4, proc.stderr
    assert proc.stdout.splitlines() == ["starting"]  # no cleanup ran, never ready


# --- per-job faults that end the process ---------------------------------------------------


def test_crash_exits_3_mid_job() -> None:
    proc = run_child(
        """
        print("job started", flush=True)
        run_on_job_thread("synthetic-crash")
        print("job returned", flush=True)
        """
    )
    assert proc.returncode == CRASH_EXIT_CODE == 3, proc.stderr
    assert proc.stdout.splitlines() == ["job started"]


@pytest.mark.parametrize("faulthandler", [False, True], ids=["plain", "faulthandler"])
def test_segv_dies_by_sigsegv(faulthandler: bool) -> None:
    args = ("-X", "faulthandler") if faulthandler else ()
    proc = run_child('run_on_job_thread("synthetic-segv")', extra_args=args)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr


def test_abort_dies_by_sigabrt() -> None:
    proc = run_child('run_on_job_thread("synthetic-abort")')
    assert proc.returncode == -signal.SIGABRT, proc.stderr


def test_crash_after_exits_when_starting_job_n_plus_1() -> None:
    proc = run_child(
        """
        for n in range(5):
            print(f"starting {n}", flush=True)
            result = engine.run(make_ctx("synthetic-image"))
            print(f"done {n} {result.ext}", flush=True)
        """,
        faults="crash-after=2",
    )
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr
    assert proc.stdout.splitlines() == [
        "starting 0",
        "done 0 webp",
        "starting 1",
        "done 1 webp",
        "starting 2",
    ]


def test_crash_after_zero_crashes_on_the_first_job() -> None:
    proc = run_child('engine.run(make_ctx("synthetic"))', faults="crash-after=0")
    assert proc.returncode == CRASH_EXIT_CODE, proc.stderr


# --- hang --------------------------------------------------------------------------------

HANG_CHILD = """
import time

enough_ticks = threading.Event()

def tick():
    n = 0
    while True:
        print(f"tick {n}", flush=True)
        n += 1
        if n == 5:
            enough_ticks.set()
        time.sleep(0.02)

threading.Thread(target=tick, daemon=True).start()
enough_ticks.wait()

def job():
    print("hanging", flush=True)
    engine.run(make_ctx("synthetic-hang"))
    print("job returned", flush=True)

run_job = threading.Thread(target=job)
run_job.start()
run_job.join()
"""


@pytest.fixture
def hung_child() -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """A child running HANG_CHILD, its stdout lines on a queue; killed afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", child_script(HANG_CHILD)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=CHILD_TIMEOUT_S)
        reader.join(timeout=CHILD_TIMEOUT_S)
        proc.stdout.close()
        assert proc.stderr is not None
        proc.stderr.close()


def next_line(lines: queue.Queue[str], deadline: float) -> str | None:
    """The next line before ``deadline`` (a monotonic time), or None when it passes."""
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return None


def test_hang_freezes_every_thread(
    hung_child: tuple[subprocess.Popen[str], queue.Queue[str]],
) -> None:
    proc, lines = hung_child
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    ticks_before = 0
    while (line := next_line(lines, deadline)) != "hanging":
        assert line is not None, "the child never started the job"
        ticks_before += line.startswith("tick")
    assert ticks_before >= 5

    # The ticker prints every 20 ms; over the next second a live process prints ~50 ticks.
    # A tick already queued when the hang began may still arrive, nothing after that.
    window_end = time.monotonic() + 1.0
    after: list[str] = []
    while (line := next_line(lines, window_end)) is not None:
        after.append(line)
    assert "job returned" not in after
    assert len(after) <= 2, after
    assert proc.poll() is None, "the child should be frozen, not dead"

    proc.kill()
    assert proc.wait(timeout=CHILD_TIMEOUT_S) == -signal.SIGKILL


# --- slow, leak, fail ----------------------------------------------------------------------


def test_slow_job_takes_its_time_reporting_progress() -> None:
    progress: list[ProgressCall] = []
    engine = SyntheticEngine(FaultOptions(slow_job_s=0.6))
    started = time.monotonic()
    result = engine.run(make_ctx(FaultModel.SLOW, progress))
    assert time.monotonic() - started >= 0.6
    assert isinstance(result, BinaryResult)
    assert result.ext == "png"
    slow_steps = [call for call in progress if call[2] == 3]  # ceil(0.6 / 0.2) steps
    assert slow_steps[:3] == [("generating", n, 3, "") for n in (1, 2, 3)]
    assert progress[-1] == ("generating", 2, 2, "")  # then the normal output


def test_slow_job_honours_cancel() -> None:
    progress: list[ProgressCall] = []
    ctx = make_ctx(FaultModel.SLOW)

    def cancel_on_first_report(phase: str, step: int, total: int, message: str) -> None:
        progress.append((phase, step, total, message))
        ctx.cancelled.set()

    # The default slow job lasts 30 s; cancelling at the first report must end it at once.
    ctx.progress = cancel_on_first_report
    started = time.monotonic()
    with pytest.raises(EngineError, match="cancelled"):
        SyntheticEngine().run(ctx)
    assert time.monotonic() - started < 10.0
    assert len(progress) == 1


def test_leak_grows_rss_and_returns_an_image() -> None:
    proc = run_child(
        """
        import psutil
        me = psutil.Process()
        print(me.memory_info().rss, flush=True)
        for _ in range(2):
            result = engine.run(make_ctx("synthetic-leak"))
            assert result.ext == "webp" and result.data[:4] == b"RIFF"
            print(me.memory_info().rss, flush=True)
        """,
        faults="leak-mb=32",
    )
    assert proc.returncode == 0, proc.stderr
    before, after_one, after_two = (int(v) for v in proc.stdout.split())
    mib = 1 << 20
    assert after_two - after_one >= 30 * mib
    assert after_two - before >= 60 * mib


def test_fail_raises_retryable_engine_error() -> None:
    with pytest.raises(EngineError, match="synthetic failure requested") as info:
        SyntheticEngine().run(make_ctx(FaultModel.FAIL))
    assert type(info.value) is EngineError
    assert info.value.retryable


@pytest.mark.parametrize("model", ["synthetic", "synthetic-image", "sd-cpp:flux", "crash"])
def test_other_models_inject_nothing(model: str) -> None:
    apply_job_fault(model, make_ctx(model), FaultOptions(), jobs_started=0)  # returns at once


def test_fault_model_ids() -> None:
    assert {m.value for m in FaultModel} == {
        "synthetic-crash",
        "synthetic-segv",
        "synthetic-abort",
        "synthetic-hang",
        "synthetic-slow",
        "synthetic-download",
        "synthetic-download-stall",
        "synthetic-leak",
        "synthetic-fail",
        "synthetic-oom",
        "synthetic-nofree",
    }


# --- downloads ---------------------------------------------------------------------------


def test_download_reports_growing_bytes_then_the_job_generates() -> None:
    progress: list[ProgressCall] = []
    engine = SyntheticEngine(FaultOptions(download_s=0.35))
    started = time.monotonic()
    result = engine.run(make_ctx(FaultModel.DOWNLOAD, progress))
    assert time.monotonic() - started >= 0.35
    assert isinstance(result, BinaryResult)
    downloads = [call for call in progress if call[0] == "downloading"]
    assert downloads[0][1] == 0 and all(call[3] == DOWNLOAD_FILE for call in downloads)
    done = [call[1] for call in downloads]
    assert done == sorted(done) and len(set(done)) >= 3
    assert downloads[-1][1] == downloads[-1][2], "the last report is the whole file"
    assert progress.index(downloads[-1]) < progress.index(("generating", 0, 2, ""))


def test_download_stall_reports_once_and_waits_for_a_cancel() -> None:
    progress: list[ProgressCall] = []
    ctx = make_ctx(FaultModel.DOWNLOAD_STALL)

    def cancel_soon(phase: str, step: int, total: int, message: str) -> None:
        progress.append((phase, step, total, message))
        threading.Timer(0.2, ctx.cancelled.set).start()

    ctx.progress = cancel_soon
    started = time.monotonic()
    with pytest.raises(EngineError, match="cancelled"):
        SyntheticEngine().run(ctx)
    assert time.monotonic() - started >= 0.2
    assert progress == [("downloading", 0, 1 << 20, DOWNLOAD_FILE)]


# --- gating by the environment -------------------------------------------------------------


def test_fault_model_ids_act_only_with_studio_worker_faults_1() -> None:
    ordinary = SyntheticEngine(environ={})
    assert isinstance(ordinary.run(make_ctx(FaultModel.FAIL)), BinaryResult)
    assert isinstance(
        SyntheticEngine(environ={FAULTS_ENV: "yes"}).run(make_ctx(FaultModel.FAIL)), BinaryResult
    )
    with pytest.raises(EngineError, match="synthetic failure requested"):
        SyntheticEngine(environ={FAULTS_ENV: "1"}).run(make_ctx(FaultModel.FAIL))
    # The per-process options work either way (tests and drills set them, never a studio).
    drill = SyntheticEngine(FaultOptions(crash_after=0), environ={})
    assert drill.faults.crash_after == 0 and not drill.faults.model_ids


def test_without_the_environment_a_crash_model_is_an_ordinary_synthetic_model() -> None:
    env = {k: v for k, v in os.environ.items() if k != FAULTS_ENV}
    proc = run_child(
        """
        for model in ("synthetic-crash", "synthetic-segv", "synthetic-hang"):
            run_on_job_thread(model)
        print("all three returned", flush=True)
        """,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "all three returned" in proc.stdout
