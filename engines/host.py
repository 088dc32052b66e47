"""The engine host's I/O loop: one process, one slot, one job at a time.

The main thread owns the DEALER socket to the supervisor: it forwards job results, sends a
heartbeat every tick and obeys ``Shutdown``/``CancelJob``, so it keeps beating while a job
runs on the job thread (the inference libraries release the GIL). A host frozen as a whole
stops beating; a long job keeps beating and reports progress. The job thread hands its
messages to the main thread over an ``inproc`` PAIR socket, because ZeroMQ sockets belong
to one thread. stdout/stderr carry logs only, never protocol.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zmq

from engines.base import BinaryResult, Engine, JobContext, JsonResult, LogFn, ProgressFn
from engines.errors import EngineError
from engines.parent_watch import parent_alive
from engines.resources import ResourceProbe
from protocol import ipc
from protocol.ipc import HostState, LogLevelName, ProgressPhase

log = logging.getLogger("engines.host")

EVENTS_ENDPOINT: Final = "inproc://job-events"
REASON_ENGINE_BUG: Final = "engine_bug"


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

    def send(self, msg: ipc.HostMessage, payload: bytes | None = None) -> None:
        assert self._sock is not None
        frames: list[bytes] = [ipc.encode(msg)]
        if payload is not None:
            frames.append(payload)
        with self._send_lock:
            self._sock.send_multipart(frames, copy=len(frames) == 1)

    def _run_one(self, job: ipc.RunJob) -> None:
        host = self._host
        host.begin_job(job.job_id)
        started = time.monotonic()
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
        host.end_job()
        self.send(msg, payload)

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

    # Called from the job thread; plain attribute writes are atomic under the GIL.
    def begin_job(self, job_id: str) -> None:
        self.cancelled.clear()
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
            vram_bytes=self._probe.vram_bytes(),
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
        )

    def serve(self) -> int:
        """Run until ``Shutdown`` or the parent dies; returns the process exit code."""
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
            return self._loop(dealer, events, worker)
        finally:
            worker.jobs.put(None)
            dealer.close()
            events.close()
            context.term()

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
        stop_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_beat:
                if not parent_alive(self.options.parent_pid):
                    log.warning("supervisor pid=%d is gone; host exiting", self.options.parent_pid)
                    return 0
                dealer.send(ipc.encode(self.heartbeat()))
                next_beat = now + interval
            if stop_at is not None and (self._job_id is None or now >= stop_at):
                return 0
            timeout_ms = max(0.0, min(next_beat, stop_at or next_beat) - now) * 1000
            for sock, _ in poller.poll(int(timeout_ms)):
                if sock is events:
                    dealer.send_multipart(events.recv_multipart(copy=False), copy=False)
                    continue
                msg = self._receive(dealer)
                match msg:
                    case ipc.RunJob():
                        if self._job_id is not None or stop_at is not None:
                            dealer.send(
                                ipc.encode(
                                    ipc.JobFailed(msg.job_id, "engine host is busy", True, "busy")
                                )
                            )
                        else:
                            self._job_id = msg.job_id
                            worker.jobs.put(msg)
                    case ipc.CancelJob():
                        if msg.job_id == self._job_id:
                            self.cancelled.set()
                    case ipc.Shutdown():
                        stop_at = time.monotonic() + msg.grace_s
                    case None:
                        pass

    def _receive(self, dealer: zmq.Socket[bytes]) -> ipc.SupervisorMessage | None:
        frames = dealer.recv_multipart()
        try:
            return ipc.decode_supervisor(frames[0])
        except ipc.IpcDecodeError as exc:
            log.error("refused a message from the supervisor: %s", exc)
            return None
