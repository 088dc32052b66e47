"""The engine host's I/O loop: one process, one slot, one job at a time.

The main thread owns the DEALER socket to the supervisor: it forwards job results, sends a
heartbeat every tick and obeys ``Shutdown``/``CancelJob``, so it keeps beating while a job
runs on the job thread (the inference libraries release the GIL). A host frozen as a whole
stops beating; a long job keeps beating and reports progress. The job thread hands its
messages to the main thread over an ``inproc`` PAIR socket, because ZeroMQ sockets belong
to one thread; each PAIR message starts with a one-byte marker frame saying whether it ends
the job, so only the main thread decides when the host is free again. A job's result is
preceded by a fresh heartbeat, so the supervisor judges recycling on the levels right after
the job. VRAM is sampled on a thread of its own (``nvidia-smi`` can take a second), never on
the I/O loop. stdout/stderr carry logs only, never protocol.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Final, assert_never

import msgspec
import zmq

from engines.base import BinaryResult, Engine, JobContext, JsonResult, LogFn, ProgressFn
from engines.errors import EngineError
from engines.parent_watch import parent_alive
from engines.resources import VRAM_PROBE_INTERVAL_S, ResourceProbe
from protocol import ipc
from protocol.ipc import HostState, LogLevelName, ProgressPhase

log = logging.getLogger("engines.host")

EVENTS_ENDPOINT: Final = "inproc://job-events"
REASON_ENGINE_BUG: Final = "engine_bug"
# First frame of every job-thread -> main-thread message: does the job go on, or is it over?
_MARK_EVENT: Final = b"e"
_MARK_FINAL: Final = b"f"


@dataclass(frozen=True)
class HostOptions:
    engine: str
    slot: str
    endpoint: str
    token: str
    models_root: Path
    parent_pid: int
    heartbeat_s: float = 1.0


class _JobThread(threading.Thread):
    """Runs jobs one at a time and reports everything through its own PAIR socket."""

    def __init__(self, host: EngineHost, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(name="job", daemon=True)
        self._host = host
        self._context = context
        self.jobs: queue.Queue[ipc.RunJob | None] = queue.Queue()
        self._send_lock = threading.Lock()
        self._sock: zmq.Socket[bytes] | None = None

    def run(self) -> None:
        self._sock = self._context.socket(zmq.PAIR)
        self._sock.linger = 0
        self._sock.connect(EVENTS_ENDPOINT)
        try:
            while (job := self.jobs.get()) is not None:
                self._run_one(job)
        finally:
            self._sock.close()

    def send(
        self, msg: ipc.HostMessage, payload: bytes | None = None, *, final: bool = False
    ) -> None:
        """Hand a message to the main thread; ``final`` marks the job's last one (its result).

        A payload travels by reference (``copy=False``): ZeroMQ keeps the bytes object alive
        until the frame has been written to the supervisor's socket.
        """
        assert self._sock is not None
        header = ipc.encode(msg)
        with self._send_lock:
            if payload is None:
                self._sock.send_multipart([_MARK_FINAL if final else _MARK_EVENT, header])
            else:
                self._sock.send(_MARK_FINAL if final else _MARK_EVENT, zmq.SNDMORE)
                self._sock.send(header, zmq.SNDMORE)
                self._sock.send(payload, copy=False)

    def _run_one(self, job: ipc.RunJob) -> None:
        host = self._host
        host.begin_job(job.job_id)
        started = time.monotonic()
        loads_before = host.engine.model_loads
        ctx = JobContext(
            job_id=job.job_id,
            model=job.model,
            task=job.task,
            model_source=job.model_source,
            models_root=host.options.models_root,
            progress=self._progress_fn(job.job_id),
            log=self._log_fn(job.job_id),
            cancelled=host.cancelled,
        )
        msg: ipc.HostMessage
        payload: bytes | None = None
        try:
            result = host.engine.run(ctx)
        except EngineError as exc:
            msg = ipc.JobFailed(job.job_id, str(exc), exc.retryable, exc.reason)
        except Exception as exc:
            # An engine bug: report it (retryable: another worker may be fine) and log the
            # traceback, but keep the host alive for the next job.
            traceback.print_exc()
            msg = ipc.JobFailed(job.job_id, f"{type(exc).__name__}: {exc}", True, REASON_ENGINE_BUG)
        else:
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if isinstance(result, BinaryResult):
                payload = result.data
                msg = ipc.JobDone(
                    job.job_id, elapsed_ms, ext=result.ext, payload_bytes=len(payload)
                )
            else:
                assert isinstance(result, JsonResult)
                msg = ipc.JobDone(job.job_id, elapsed_ms, json=result.value)
        if host.engine.model_loads != loads_before:
            host.refresh_vram()
        host.end_job()
        # Levels right after the job, ahead of its result: the supervisor decides on them
        # whether to recycle this host before it hands it the next job.
        self.send(host.heartbeat())
        self.send(msg, payload, final=True)

    def _progress_fn(self, job_id: str) -> ProgressFn:
        def progress(phase: ProgressPhase, step: int, total: int, message: str = "") -> None:
            self._host.note_progress(phase)
            self.send(ipc.Progress(job_id, phase, step, total, message))

        return progress

    def _log_fn(self, job_id: str) -> LogFn:
        def emit(level: LogLevelName, message: str) -> None:
            self.send(ipc.HostLog(level, message, job_id))

        return emit


class EngineHost:
    """Owns the engine, the sockets and the counters the heartbeats report."""

    def __init__(self, options: HostOptions, engine: Engine) -> None:
        self.options = options
        self.engine = engine
        self.cancelled = threading.Event()
        self._state: HostState = "idle"
        self._job_id: str | None = None
        self._jobs_done = 0
        self._progress_seq = 0
        self._probe = ResourceProbe()
        self._vram_bytes: int | None = None
        self._stopping = threading.Event()
        # Owned by the main (I/O) thread: the job it handed over and not yet seen end, and
        # when a requested shutdown must happen at the latest.
        self._running: str | None = None
        self._stop_at: float | None = None

    # Called from the job thread; plain attribute writes are atomic under the GIL. These
    # feed the heartbeats only; whether the host is free is the main thread's ``_running``.
    def begin_job(self, job_id: str) -> None:
        self._job_id = job_id
        self._state = "generating"
        self._progress_seq += 1

    def end_job(self) -> None:
        self._job_id = None
        self._state = "idle"
        self._jobs_done += 1
        self._progress_seq += 1

    def note_progress(self, phase: ProgressPhase) -> None:
        self._state = phase
        self._progress_seq += 1

    def heartbeat(self) -> ipc.HostHeartbeat:
        return ipc.HostHeartbeat(
            state=self._state,
            job_id=self._job_id,
            rss_bytes=self._probe.rss_bytes(),
            vram_bytes=self._vram_bytes,
            jobs_done=self._jobs_done,
            model_loads=self.engine.model_loads,
            progress_seq=self._progress_seq,
        )

    def ready(self) -> ipc.Ready:
        o = self.options
        return ipc.Ready(
            version=ipc.IPC_VERSION,
            token=o.token,
            engine=o.engine,
            slot=o.slot,
            pid=os.getpid(),
            models_per_kind={k: list(v) for k, v in self.engine.advertised_models().items()},
            library_versions=self.engine.library_versions(),
            compute=self.engine.compute_device(),
        )

    def refresh_vram(self) -> None:
        """Read VRAM now (after a model load, so the supervisor's baseline includes it)."""
        self._vram_bytes = self._probe.vram_bytes(max_age_s=0)

    def _sample_vram(self) -> None:
        """VRAM thread: refresh the reading the heartbeats report until the host stops."""
        while not self._stopping.wait(VRAM_PROBE_INTERVAL_S):
            self._vram_bytes = self._probe.vram_bytes()

    def serve(self) -> int:
        """Run until ``Shutdown`` or the parent dies; returns the process exit code."""
        self.refresh_vram()  # the first heartbeat is the baseline: it needs a real reading
        threading.Thread(target=self._sample_vram, name="vram", daemon=True).start()
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        events = context.socket(zmq.PAIR)
        events.linger = 0
        events.bind(EVENTS_ENDPOINT)
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, self.options.slot.encode())
        dealer.linger = 2000
        dealer.connect(self.options.endpoint)
        worker = _JobThread(self, context)
        worker.start()
        try:
            dealer.send(ipc.encode(self.ready()))
            code = self._loop(dealer, events, worker)
        finally:
            self._stopping.set()
            worker.jobs.put(None)
            dealer.close()
            events.close()
            if self._running is None:
                context.term()
        if self._running is not None:
            # The shutdown grace is over and the job thread is still inside the engine:
            # leave now, without the cleanup (context.term, engine.close) that would wait
            # for it or free the model under it.
            log.warning("shutdown grace over during job %s; exiting now", self._running)
            logging.shutdown()
            os._exit(code)
        return code

    def _loop(
        self,
        dealer: zmq.Socket[bytes],
        events: zmq.Socket[bytes],
        worker: _JobThread,
    ) -> int:
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(events, zmq.POLLIN)
        interval = self.options.heartbeat_s
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_beat:
                if not parent_alive(self.options.parent_pid):
                    log.warning("supervisor pid=%d is gone; host exiting", self.options.parent_pid)
                    return 0
                dealer.send(ipc.encode(self.heartbeat()))
                next_beat = now + interval
            stop_at = self._stop_at
            if stop_at is not None and (self._running is None or now >= stop_at):
                return 0
            wake_at = next_beat if stop_at is None else min(next_beat, stop_at)
            # Round up: a timeout truncated to 0 ms would spin until the next beat.
            for sock, _ in poller.poll(max(0, math.ceil((wake_at - now) * 1000))):
                if sock is events:
                    self._forward(events, dealer)
                else:
                    self._obey(self._receive(dealer), dealer, worker)

    def _forward(self, events: zmq.Socket[bytes], dealer: zmq.Socket[bytes]) -> None:
        """Pass one job-thread message on to the supervisor, frames by reference."""
        mark, *frames = events.recv_multipart(copy=False)
        if mark.bytes == _MARK_FINAL:
            # Free before forwarding: the supervisor may send the next job the moment it
            # sees this result.
            self._running = None
        dealer.send_multipart(frames, copy=False)

    def _obey(
        self,
        msg: ipc.SupervisorMessage | None,
        dealer: zmq.Socket[bytes],
        worker: _JobThread,
    ) -> None:
        match msg:
            case ipc.RunJob():
                if self._running is not None or self._stop_at is not None:
                    busy = ipc.JobFailed(msg.job_id, "engine host is busy", True, "busy")
                    dealer.send(ipc.encode(busy))
                else:
                    self._running = msg.job_id
                    # Cleared here, not on the job thread: a CancelJob that arrives before
                    # the job thread picks the job up must not be lost.
                    self.cancelled.clear()
                    worker.jobs.put(msg)
            case ipc.CancelJob():
                if msg.job_id == self._running:
                    self.cancelled.set()
            case ipc.Shutdown():
                self._stop_at = time.monotonic() + msg.grace_s
            case ipc.LoadGrant() | ipc.Unload() | ipc.Probe():
                pass  # GPU memory protocol: wired by the next change
            case None:
                pass
            case _:
                assert_never(msg)

    def _receive(self, dealer: zmq.Socket[bytes]) -> ipc.SupervisorMessage | None:
        frames = dealer.recv_multipart()
        try:
            return ipc.decode_supervisor(frames[0])
        except ipc.IpcDecodeError as exc:
            log.error("refused a message from the supervisor: %s", exc)
            self._refuse_undecodable_job(dealer, frames[0], str(exc))
            return None

    @staticmethod
    def _refuse_undecodable_job(dealer: zmq.Socket[bytes], data: bytes, error: str) -> None:
        """A run message we cannot decode still names its job: fail it at once rather
        than leave the supervisor waiting for the job's deadline."""
        try:
            raw = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return
        if isinstance(raw, dict) and raw.get("t") == "run" and isinstance(raw.get("job_id"), str):
            failed = ipc.JobFailed(
                raw["job_id"], f"engine host refused the job: {error}", False, ipc.REASON_BAD_INPUT
            )
            dealer.send(ipc.encode(failed))
