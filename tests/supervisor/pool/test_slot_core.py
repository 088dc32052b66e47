"""The pure slot core, driven through scenario tables: no event loop, no process, no clock.

Each scenario is a list of steps; a step applies one event (a spawn, a message, a tick at
time t, an exit, a drain, a reservation, a probe result) and names what the core must
answer: the state, the verdict's cause, the job's fate, the next step between generations,
the strike a job takes. The real-process tests (test_pool.py) drive the same core through
real hosts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from protocol import ipc
from supervisor.pool.loss_ledger import Strike
from supervisor.pool.policies import PoisonJobs, RecycleLimits
from supervisor.pool.settings import PoolSettings
from supervisor.pool.slot_core import SlotCore
from supervisor.pool.slot_state import SlotState
from supervisor.pool.slot_steps import ExpectedDevice, Spawn, Stop, Wait
from supervisor.pool.verdict import LossCause, Verdict

S = SlotState
SETTINGS = PoolSettings(
    models_root=Path("/nonexistent"),
    ready_timeout_s=10,
    heartbeat_timeout_idle_s=5,
    heartbeat_timeout_busy_s=20,
    stall_timeout_s=60,
    restart_backoff_base_s=1,
    restart_backoff_max_s=8,
    crash_loop_max=3,
    crash_loop_window_s=100,
    crash_loop_cooldown_s=300,
    download_stall_s=20,
    download_deadline_s=200,
    recycle=RecycleLimits(after_jobs=0, rss_growth_bytes=1000, vram_growth_bytes=0),
)
GPU0 = ExpectedDevice(0, "Sim 24G", "GPU-aaaa", must_compute_there=True)

Step = tuple[str, Callable[[SlotCore], object], object]


def ready_msg(compute: ipc.ComputeDevice | None = None) -> ipc.Ready:
    return ipc.Ready(
        ipc.IPC_VERSION,
        "tok",
        "sdcpp",
        "s.1",
        42,
        {"image": ["m"]},
        {},
        compute or ipc.ComputeDevice("cpu"),
    )


def beat(  # type: ignore[no-untyped-def]
    state: str = "idle", rss: int = 100, loads: int = 1, seq: int = 0, jobs: int = 0, job=None
):
    return ipc.HostHeartbeat(state, job, rss, None, jobs, loads, seq)  # type: ignore[arg-type]


def cause(verdict: Verdict | None) -> LossCause | None:
    return None if verdict is None else verdict.cause


# --- steps (each returns what the core answered) -------------------------------------------


def spawn(t: float) -> Callable[[SlotCore], object]:
    def go(core: SlotCore) -> object:
        core.spawned(t)
        return core.state

    return go


def ready(t: float, *, authentic: bool = True, compute: ipc.ComputeDevice | None = None):  # type: ignore[no-untyped-def]
    return lambda core: cause(core.ready_received(ready_msg(compute), authentic=authentic, now=t))


def heartbeat(t: float, **kw: object):  # type: ignore[no-untyped-def]
    return lambda core: cause(core.heartbeat_received(beat(**kw), t))  # type: ignore[arg-type]


def tick(t: float):  # type: ignore[no-untyped-def]
    return lambda core: cause(core.tick(t))


def progress(job: str, t: float, phase: str = "generating", done: int = 0, file: str = ""):  # type: ignore[no-untyped-def]
    """A progress report (``done``: bytes of ``file`` while downloading); returns whether it
    was the running job's."""
    msg = ipc.Progress(job, phase, done, 100, file)  # type: ignore[arg-type]
    return lambda core: core.progress_received(msg, t)


def probe(ok: bool = True, detail: str = "cpu: nothing to probe"):  # type: ignore[no-untyped-def]
    """The host answers a probe: a strike, the cause of the verdict, or None."""

    def go(core: SlotCore) -> object:
        answer = core.probe_answered(ok, detail)
        return answer.cause if isinstance(answer, Verdict) else answer

    return go


def reserve(job: str):  # type: ignore[no-untyped-def]
    def go(core: SlotCore) -> object:
        core.reserve(job)
        return core.is_free

    return go


def start(job: str, t: float, deadline_s: float = 30.0):  # type: ignore[no-untyped-def]
    def go(core: SlotCore) -> object:
        refused = core.start_job(job, deadline_s, t)
        return core.state if refused is None else refused.reason

    return go


def end(job: str, *, oom: bool = False, waited: bool = True):  # type: ignore[no-untyped-def]
    """The host reports the job's result (``waited``: its caller still waits for it)."""

    def go(core: SlotCore) -> object:
        ended = core.job_ended(job, out_of_memory=oom, retry_possible=waited)
        return (ended, core.state, core.is_free)

    return go


def drain(*, forced: bool = False):  # type: ignore[no-untyped-def]
    return lambda core: (cause(core.request_drain(forced=forced)), core.state)


def lose(  # type: ignore[no-untyped-def]
    loss: LossCause, t: float, detail: str = "died (killed by SIGKILL)", *, waited: bool = True
):
    """The generation ends with this verdict: leave, then settle; returns the lost job's
    (reason, retryable) or None, whether the slot parked, and the state."""

    def go(core: SlotCore) -> object:
        verdict = Verdict(loss, detail)
        core.leave_generation(verdict)
        settled = core.settle(verdict, "exit text", t, retry_possible=waited)
        lost = settled.lost
        fate = None if lost is None else (lost.outcome.reason, lost.outcome.retryable)
        return (fate, settled.parked, core.state)

    return go


def lose_unproven(loss: LossCause, t: float):  # type: ignore[no-untyped-def]
    """Like ``lose``, for a host that ends before it proved itself: returns the job whose
    pending loss stays the engine's, whether the slot parked, and the state."""

    def go(core: SlotCore) -> object:
        verdict = Verdict(loss, "died")
        core.leave_generation(verdict)
        settled = core.settle(verdict, "exit text", t)
        return (settled.unproven, settled.parked, core.state)

    return go


def bad_job(job: str, t: float) -> list[Step]:
    """A fresh host (proving first when a loss is pending) runs ``job``, which kills it."""
    return [
        ("spawned", spawn(t), S.STARTING),
        ("ready", ready(t + 0.5), None),
        ("proven", lambda c: c.probe_answered(True, "ok") and c.state, S.READY),
        ("reserve", reserve(job), False),
        ("start", start(job, t + 1), S.BUSY),
        (
            "the job kills its host",
            lose(LossCause.SIGNAL, t + 2),
            (("signal", True), False, S.RESTARTING),
        ),
    ]


def next_step(t: float):  # type: ignore[no-untyped-def]
    return lambda core: core.next_step(t)


def stop(core: SlotCore) -> object:
    core.stop()
    return core.state


SCENARIOS: dict[str, list[Step]] = {
    "a normal life": [
        ("first spawn", next_step(0), Spawn()),
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0.5), None),
        ("free", lambda c: c.is_free, True),
        ("reserve", reserve("j1"), False),
        ("start", start("j1", 1), S.BUSY),
        ("done", end("j1"), (True, S.READY, True)),
        ("a stray result", end("j1"), (False, S.READY, True)),
        ("drain", drain(), (LossCause.DRAIN, S.READY)),
        ("leave", lose(LossCause.DRAIN, 2, "shutting down"), (None, False, S.STOPPED)),
        ("after", next_step(3), Stop()),
    ],
    "ready timeout, then backoff doubles and a crash loop parks": [
        ("spawned", spawn(0), S.STARTING),
        ("quiet", tick(9), None),
        ("too late", tick(11), LossCause.READY_TIMEOUT),
        ("lost", lose(LossCause.READY_TIMEOUT, 11), (None, False, S.RESTARTING)),
        ("backs off 1 s", next_step(11), Wait(12)),
        ("then spawns", next_step(12), Spawn()),
        ("spawned", spawn(12), S.STARTING),
        ("lost again", lose(LossCause.EXIT, 13), (None, False, S.RESTARTING)),
        ("backs off 2 s", next_step(13), Wait(15)),
        ("spawned", spawn(15), S.STARTING),
        ("third loss parks", lose(LossCause.SIGNAL, 16), (None, True, S.FAILED)),
        ("for the cool-down", next_step(16), Wait(316)),
        ("then starts clean", next_step(316), Spawn()),
        ("spawned", spawn(316), S.STARTING),
        (
            "one more loss backs off 1 s again",
            lose(LossCause.EXIT, 317),
            (None, False, S.RESTARTING),
        ),
        ("fresh backoff", next_step(317), Wait(318)),
    ],
    "a loss becomes its job's strike once the fresh host passes its probe": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("p"), False),
        ("start", start("p", 1), S.BUSY),
        ("loss: retryable", lose(LossCause.SIGNAL, 2), (("signal", True), False, S.RESTARTING)),
        ("counted as a crash for now", lambda c: c.crash_loop_count, 1),
        ("no strike yet", lambda c: c._poison.strikes_of("p"), 0),
        ("backs off", next_step(2), Wait(3)),
        ("spawned", spawn(3), S.STARTING),
        ("ready: proving first", ready(3.5), None),
        (
            "proving",
            lambda c: (c.state, c.is_free, c.is_serving, c.proving_for),
            (S.PROVING, False, False, "p"),
        ),
        ("the probe passes: the job's strike", probe(), Strike("p", 1, 2, poison=False)),
        ("ready and free", lambda c: (c.state, c.is_free), (S.READY, True)),
        ("no longer a crash", lambda c: c.crash_loop_count, 0),
        ("struck once", lambda c: c._poison.strikes_of("p"), 1),
        ("a later probe result changes nothing", probe(), None),
    ],
    "a job that kills two proven hosts is poison; a third loss fails it final": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("p"), False),
        ("start", start("p", 1), S.BUSY),
        ("first loss", lose(LossCause.SIGNAL, 2), (("signal", True), False, S.RESTARTING)),
        ("spawned", spawn(3), S.STARTING),
        ("ready", ready(3), None),
        ("proven", probe(), Strike("p", 1, 2, poison=False)),
        ("reserve", reserve("p"), False),
        ("start again", start("p", 4), S.BUSY),
        (
            "second loss: still retryable (not proven yet)",
            lose(LossCause.EXIT, 5),
            (("exit", True), False, S.RESTARTING),
        ),
        ("spawned", spawn(6), S.STARTING),
        ("ready", ready(6), None),
        ("proven: now poison", probe(), Strike("p", 2, 2, poison=True)),
        ("reserve", reserve("p"), False),
        ("start (the router would refuse it)", start("p", 7), S.BUSY),
        (
            "already poison: final",
            lose(LossCause.EXIT, 8),
            (("poison", False), False, S.RESTARTING),
        ),
    ],
    "three bad jobs in a row: each struck, the slot never parks": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("a"), False),
        ("start", start("a", 1), S.BUSY),
        ("a kills its host", lose(LossCause.SIGNAL, 2), (("signal", True), False, S.RESTARTING)),
        *bad_job("b", 3),
        *bad_job("c", 6),
        ("spawned", spawn(9), S.STARTING),
        ("ready", ready(9), None),
        ("proven", probe(), Strike("c", 1, 2, poison=False)),
        (
            "never parked, nothing left in the crash loop",
            lambda c: (c.state, c.crash_loop_count, c.parked_until),
            (S.READY, 0, None),
        ),
        ("one strike each", lambda c: [c._poison.strikes_of(j) for j in "abc"], [1, 1, 1]),
    ],
    "a broken driver: every job kills its host, no fresh host proves itself: parks, no strikes": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("a"), False),
        ("start", start("a", 1), S.BUSY),
        ("a's host dies", lose(LossCause.SIGNAL, 2), (("signal", True), False, S.RESTARTING)),
        ("spawned", spawn(3), S.STARTING),
        (
            "the fresh host dies at start",
            lose_unproven(LossCause.EXIT, 3.5),
            ("a", False, S.RESTARTING),
        ),
        ("spawned", spawn(6), S.STARTING),
        ("ready: nothing pending, no probe", ready(6), None),
        ("free", lambda c: (c.state, c.is_free), (S.READY, True)),
        ("reserve", reserve("b"), False),
        ("start", start("b", 7), S.BUSY),
        (
            "b's host dies: the loop is full",
            lose(LossCause.SIGNAL, 8),
            (("signal", True), True, S.FAILED),
        ),
        ("no strikes", lambda c: [c._poison.strikes_of(j) for j in "ab"], [0, 0]),
        ("cool-down", next_step(8), Wait(308)),
        ("then a fresh start", next_step(308), Spawn()),
        ("spawned", spawn(308), S.STARTING),
        ("ready: b's loss still waits for a proof", ready(308.5), None),
        ("proving", lambda c: c.state, S.PROVING),
        (
            "a host that dies too leaves b unstruck",
            lose_unproven(LossCause.SIGNAL, 309),
            ("b", False, S.RESTARTING),
        ),
        ("no strikes", lambda c: [c._poison.strikes_of(j) for j in "ab"], [0, 0]),
    ],
    "a broken driver whose fresh hosts fail their probe: parks, no strikes": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("a"), False),
        ("start", start("a", 1), S.BUSY),
        ("a's host dies", lose(LossCause.SIGNAL, 2), (("signal", True), False, S.RESTARTING)),
        ("spawned", spawn(3), S.STARTING),
        ("ready", ready(3), None),
        ("the probe fails", probe(ok=False, detail="CUDA error"), LossCause.PROBE_FAILED),
        (
            "replaced: a crash, a's loss unproven",
            lose_unproven(LossCause.PROBE_FAILED, 3.5),
            ("a", False, S.RESTARTING),
        ),
        *bad_job("b", 6)[:2],
        ("free at once", lambda c: c.is_free, True),
        ("reserve", reserve("b"), False),
        ("start", start("b", 7), S.BUSY),
        ("b's host dies: parked", lose(LossCause.EXIT, 8), (("exit", True), True, S.FAILED)),
        ("no strikes", lambda c: [c._poison.strikes_of(j) for j in "ab"], [0, 0]),
    ],
    "a fresh host that never answers its probe is replaced": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("a"), False),
        ("start", start("a", 1), S.BUSY),
        ("lost", lose(LossCause.HANG, 2), (("hang", True), False, S.RESTARTING)),
        ("spawned", spawn(3), S.STARTING),
        ("ready", ready(3), None),
        ("beats", heartbeat(12), None),
        ("still within the ready timeout", tick(12.9), None),
        ("no answer", tick(13.1), LossCause.PROBE_FAILED),
    ],
    "drained while proving": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("a"), False),
        ("start", start("a", 1), S.BUSY),
        ("lost", lose(LossCause.EXIT, 2), (("exit", True), False, S.RESTARTING)),
        ("spawned", spawn(3), S.STARTING),
        ("ready", ready(3), None),
        ("drain", drain(), (LossCause.DRAIN, S.PROVING)),
        ("leave", lose(LossCause.DRAIN, 4, "shutting down"), (None, False, S.STOPPED)),
        ("done", next_step(4), Stop()),
    ],
    "a loss while downloading is no strike: no probe, counted as a crash": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start", start("d", 1), S.BUSY),
        ("downloading", progress("d", 2, "downloading", 10, "m.gguf"), True),
        ("dies", lose(LossCause.SIGNAL, 3), (("signal", True), False, S.RESTARTING)),
        ("a crash", lambda c: c.crash_loop_count, 1),
        ("spawned", spawn(4), S.STARTING),
        ("ready at once: nothing to prove", ready(4), None),
        ("free", lambda c: (c.state, c.is_free), (S.READY, True)),
        ("no strike", lambda c: c._poison.strikes_of("d"), 0),
    ],
    "a download does not count toward the job deadline, which starts when it ends": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start (deadline 30 s)", start("d", 0, deadline_s=30), S.BUSY),
        ("the heartbeat says downloading", heartbeat(1, state="downloading", seq=1, job="d"), None),
        ("bytes", progress("d", 1, "downloading", 10, "m.gguf"), True),
        ("bytes", progress("d", 19, "downloading", 20, "m.gguf"), True),
        ("bytes", progress("d", 38, "downloading", 30, "m.gguf"), True),
        ("past 30 s, downloading: no deadline", tick(40), None),
        ("loading: the deadline clock starts", progress("d", 50, "loading"), True),
        ("29 s later", tick(79), None),
        ("30 s later", tick(81), LossCause.DEADLINE),
    ],
    "a download with no bytes for download_stall_s is a download stall": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start", start("d", 0), S.BUSY),
        ("bytes", progress("d", 1, "downloading", 10, "m.gguf"), True),
        ("the same count again is no bytes", progress("d", 15, "downloading", 10, "m.gguf"), True),
        ("beats", heartbeat(20, state="downloading", seq=1, job="d"), None),
        ("20 s without bytes", tick(20.9), None),
        ("21 s", tick(21.1), LossCause.DOWNLOAD_STALL),
        (
            "no strike, retryable",
            lose(LossCause.DOWNLOAD_STALL, 21.2),
            (("download_stall", True), False, S.RESTARTING),
        ),
        ("counted as a crash", lambda c: c.crash_loop_count, 1),
    ],
    "a download longer than download_deadline_s": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start", start("d", 0, deadline_s=1000), S.BUSY),
        *[
            (f"bytes at {t}", progress("d", t, "downloading", t, "m.gguf"), True)
            for t in range(1, 202, 10)
        ],
        ("beats", heartbeat(200, state="downloading", seq=1, job="d"), None),
        ("200 s in", tick(200.9), None),
        ("past it", tick(201.1), LossCause.DOWNLOAD_DEADLINE),
    ],
    "a heartbeat ends the download phase too (a load asked for before any progress)": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start", start("d", 0, deadline_s=30), S.BUSY),
        ("bytes", progress("d", 1, "downloading", 10, "m.gguf"), True),
        ("loading, by heartbeat", heartbeat(100, state="loading", seq=2, job="d"), None),
        ("no stall: not downloading", tick(125), None),
        ("deadline from the end of the download", tick(131), LossCause.DEADLINE),
    ],
    "out of memory: no strike, no crash, one local retry held": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("m"), False),
        ("start", start("m", 1), S.BUSY),
        (
            "host died of OOM",
            lose(LossCause.VRAM_OOM, 2),
            (("vram_oom", True), False, S.RESTARTING),
        ),
        ("held for the retry", lambda c: c.retry_pending("m"), True),
        ("respawns at once", next_step(2), Spawn()),
        ("spawned", spawn(2), S.STARTING),
        ("ready", ready(2.5), None),
        ("not free while held", lambda c: c.is_free, False),
        ("the retry starts without a reservation", start("m", 3), S.BUSY),
        ("fails OOM again", end("m", oom=True), (True, S.READY, True)),
        ("no second hold", lambda c: c.retry_pending("m"), False),
        ("never a crash", lambda c: c.crash_loop_count, 0),
    ],
    "a recycle waits for the job, then restarts politely": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("baseline after the load", heartbeat(0.1, rss=100, loads=1), None),
        ("reserve", reserve("r"), False),
        ("start", start("r", 1), S.BUSY),
        ("grown mid-job", heartbeat(1.5, state="generating", rss=5000, seq=1), None),
        ("nothing planned mid-job", tick(1.6), None),
        ("job done: not free any more", end("r"), (True, S.READY, False)),
        ("recycle", tick(1.7), LossCause.RECYCLE),
        ("leave", lose(LossCause.RECYCLE, 2, "RSS grew"), (None, False, S.RESTARTING)),
        ("no backoff", next_step(2), Spawn()),
    ],
    "a drain lets the job finish": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("d"), False),
        ("start", start("d", 1), S.BUSY),
        ("drain", drain(), (None, S.DRAINING)),
        ("still running", tick(2), None),
        ("job done", end("d"), (True, S.DRAINING, False)),
        ("now stop", tick(3), LossCause.DRAIN),
        ("leave", lose(LossCause.DRAIN, 3, "shutting down"), (None, False, S.STOPPED)),
    ],
    "a forced drain fails the job retryable and stops": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("f"), False),
        ("start", start("f", 1), S.BUSY),
        ("drain", drain(), (None, S.DRAINING)),
        ("force", drain(forced=True), (LossCause.FORCED, S.DRAINING)),
        ("leave", lose(LossCause.FORCED, 2, "stopped"), (("shutdown", True), False, S.STOPPED)),
        ("done", next_step(3), Stop()),
    ],
    "drained while backing off": [
        ("spawned", spawn(0), S.STARTING),
        ("lost", lose(LossCause.EXIT, 1), (None, False, S.RESTARTING)),
        ("drain", drain(), (None, S.RESTARTING)),
        ("loop ends", next_step(1), Stop()),
        ("stopped", stop, S.STOPPED),
    ],
    "a bad handshake is a crash": [
        ("spawned", spawn(0), S.STARTING),
        ("forged ready", ready(0.1, authentic=False), LossCause.HANDSHAKE),
    ],
    "a hung host": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("beats", heartbeat(3), None),
        ("quiet but within the idle limit", tick(7.9), None),
        ("hang", tick(8.1), LossCause.HANG),
    ],
    "a GPU slot whose host came up on the CPU is parked at once": [
        ("pin", lambda c: setattr(c, "expected", GPU0), None),
        ("spawned", spawn(0), S.STARTING),
        ("cpu", ready(0.2), LossCause.WRONG_DEVICE),
        ("parked", lose(LossCause.WRONG_DEVICE, 0.3, "came up on the CPU"), (None, True, S.FAILED)),
        ("for the cool-down", next_step(1), Wait(300.3)),
    ],
    "a GPU slot on its own card serves": [
        ("pin", lambda c: setattr(c, "expected", GPU0), None),
        ("spawned", spawn(0), S.STARTING),
        ("right card", ready(0.2, compute=ipc.ComputeDevice("cuda", "H200", "GPU-aaaa")), None),
        ("free", lambda c: c.is_free, True),
    ],
    "a GPU slot on another card is refused": [
        ("pin", lambda c: setattr(c, "expected", GPU0), None),
        ("spawned", spawn(0), S.STARTING),
        (
            "other card",
            ready(0.2, compute=ipc.ComputeDevice("cuda", "H200", "GPU-bbbb")),
            LossCause.WRONG_DEVICE,
        ),
    ],
    "an out-of-memory loss whose caller is gone holds nothing": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("m"), False),
        ("start", start("m", 1), S.BUSY),
        (
            "lost",
            lose(LossCause.VRAM_OOM, 2, waited=False),
            (("vram_oom", True), False, S.RESTARTING),
        ),
        ("no hold", lambda c: c.held_for, None),
        ("spawned", spawn(2), S.STARTING),
        ("ready", ready(2.5), None),
        ("free", lambda c: c.is_free, True),
    ],
    "no hold while stopping": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("m"), False),
        ("start", start("m", 1), S.BUSY),
        ("drain", drain(), (None, S.DRAINING)),
        ("fails OOM", end("m", oom=True), (True, S.DRAINING, False)),
        ("no hold", lambda c: c.held_for, None),
        ("stops", tick(2), LossCause.DRAIN),
    ],
    "a recycle asked during start-up waits for ready, and a stale one is dropped": [
        ("spawned", spawn(0), S.STARTING),
        ("stale (host 0)", lambda c: c.request_recycle(LossCause.UNLOAD_STUCK, "old", 0), None),
        ("nothing", tick(0.1), None),
        ("asked (host 1)", lambda c: c.request_recycle(LossCause.GPU_SUSPECT, "gpu", 1), None),
        ("not while starting", tick(0.2), None),
        ("ready", ready(0.3), LossCause.GPU_SUSPECT),
        ("a polite restart", lose(LossCause.GPU_SUSPECT, 0.4, "gpu"), (None, False, S.RESTARTING)),
        ("no backoff", next_step(0.4), Spawn()),
    ],
    "a reservation belongs to its job": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve for a", reserve("a"), False),
        ("b cannot start on a's reservation", start("b", 1), "not_ready"),
        ("still a's", lambda c: c.reserved_for, "a"),
        ("b's release leaves it", lambda c: c.release("b"), None),
        ("a starts", start("a", 1), S.BUSY),
    ],
    "the governor's recycle waits for an idle host": [
        ("spawned", spawn(0), S.STARTING),
        ("ready", ready(0), None),
        ("reserve", reserve("u"), False),
        (
            "asked while reserved",
            lambda c: c.request_recycle(LossCause.UNLOAD_STUCK, "freed nothing", 1),
            None,
        ),
        ("not yet", tick(1), None),
        ("start", start("u", 1), S.BUSY),
        ("done", end("u"), (True, S.READY, False)),
        ("now", tick(2), LossCause.UNLOAD_STUCK),
        (
            "not a crash",
            lose(LossCause.UNLOAD_STUCK, 2, "freed nothing"),
            (None, False, S.RESTARTING),
        ),
        ("at once", next_step(2), Spawn()),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    core = SlotCore("sdcpp-gpu0-0", "sdcpp", SETTINGS, PoisonJobs(strikes=2))
    for what, action, expected in SCENARIOS[name]:
        got = action(core)
        assert got == expected, f"{name}: step {what!r}: expected {expected!r}, got {got!r}"


def test_reserving_a_slot_that_is_not_free_is_a_bug() -> None:
    core = SlotCore("s", "synthetic", SETTINGS, PoisonJobs())
    with pytest.raises(RuntimeError, match="not free"):
        core.reserve("x")


def test_a_job_started_without_a_reservation_is_refused_retryable() -> None:
    core = SlotCore("s", "synthetic", SETTINGS, PoisonJobs())
    core.spawned(0)
    core.ready_received(ready_msg(), authentic=True, now=0)
    refused = core.start_job("x", 30, 1)
    assert refused is not None and refused.retryable and refused.reason == "not_ready"
    assert core.state is S.READY
