"""The engine host's I/O loop: one process, one slot, one job at a time.

The main thread owns the DEALER socket to the supervisor: it forwards job results, sends a
heartbeat every tick and obeys ``Shutdown``/``CancelJob``, so it keeps beating while a job
runs on the job thread (``engines.job_thread``; the inference libraries release the GIL). A
host frozen as a whole stops beating; a long job keeps beating and reports progress. Jobs,
``Unload`` and ``Probe`` are queued to the job thread in arrival order; a ``LoadGrant`` is
handed to the job waiting for it through ``engines.load_gate`` (a grant no load waits for is
logged and dropped), and a ``CancelJob`` also ends that wait. Only the main thread decides
when the host is free again, when the job thread's final message for a job passes. A host
does not read VRAM (the supervisor reads every card through NVML, ``engines.resources``):
heartbeats carry its RSS and ``vram_bytes=None``. stdout/stderr carry logs only, never
protocol.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import assert_never

import msgspec
import zmq

from engines.base import Engine
from engines.host_options import HostOptions
from engines.job_thread import EVENTS_ENDPOINT, MARK_FINAL, JobThread
from engines.load_gate import LoadGate
from engines.parent_watch import parent_alive
from engines.resources import ResourceProbe
from protocol import ipc
from protocol.ipc import HostState, ProgressPhase

log = logging.getLogger("engines.host")


class EngineHost:
    """Owns the engine, the sockets and the counters the heartbeats report."""

    def __init__(self, options: HostOptions, engine: Engine) -> None:
        self.options = options
        self.engine = engine
        self.cancelled = threading.Event()
        self.gate = LoadGate()
        self._state: HostState = "idle"
        self._job_id: str | None = None
        self._jobs_done = 0
        self._progress_seq = 0
        self._probe = ResourceProbe()
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
            vram_bytes=None,  # the supervisor reads VRAM itself
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
        worker = JobThread(self, context)
        worker.start()
        try:
            dealer.send(ipc.encode(self.ready()))
            code = self._loop(dealer, events, worker)
        finally:
            worker.work.put(None)
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
        worker: JobThread,
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
        if mark.bytes == MARK_FINAL:
            # Free before forwarding: the supervisor may send the next job the moment it
            # sees this result.
            self._running = None
        dealer.send_multipart(frames, copy=False)

    def _obey(
        self,
        msg: ipc.SupervisorMessage | None,
        dealer: zmq.Socket[bytes],
        worker: JobThread,
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
                    worker.work.put(msg)
            case ipc.CancelJob():
                if msg.job_id == self._running:
                    self.cancelled.set()
                    self.gate.wake()
            case ipc.Shutdown():
                self._stop_at = time.monotonic() + msg.grace_s
            case ipc.LoadGrant():
                if not self.gate.offer(msg):
                    log.warning("dropped a load grant for job %s: no load waits for it", msg.job_id)
            case ipc.Unload() | ipc.Probe():
                worker.work.put(msg)  # after the running job, if any, in arrival order
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
