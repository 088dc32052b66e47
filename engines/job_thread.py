"""The engine host's job thread: runs jobs, unloads and probes one at a time, in arrival order.

Everything that touches the engine happens here, so a job, an unload and a device probe never
overlap and a model is never freed under a running job. Its messages go to the main (I/O)
thread over an ``inproc`` PAIR socket (ZeroMQ sockets belong to one thread); each starts with
a one-byte marker frame saying whether it ends the job, so only the main thread decides when
the host is free again. Message order for one job: (with ``--ask-before-load``, at each load:
``Resident`` if an eviction changed it, then ``LoadRequest``, and the wait for the grant),
``Progress``/``HostLog`` lines, then a fresh ``HostHeartbeat``, ``Resident`` if what is loaded
changed, and finally ``JobDone`` or ``JobFailed``. An ``Unload`` answers with ``Resident`` if
it changed anything, a ``Probe`` with ``ProbeResult``. ``Resident`` is only sent on a change
(most jobs change nothing, and a message per job costs the IPC path). It never reads the
supervisor's socket.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final, Protocol, assert_never

import zmq

from engines.base import (
    BinaryResult,
    Engine,
    JobContext,
    JsonResult,
    LogFn,
    ProgressFn,
    load_at_once,
)
from engines.errors import EngineError, LoadRefused
from engines.host_options import HostOptions
from engines.job_failure import job_failed
from engines.load_gate import LoadGate
from engines.load_keys import load_key
from protocol import ipc
from protocol.ipc import LogLevelName, ProgressPhase


class JobHost(Protocol):
    """What the job thread needs of its host (``engines.host.EngineHost``): the engine, how
    the host was started, the cancel flag, the load gate and the counters heartbeats carry."""

    engine: Engine
    options: HostOptions
    cancelled: threading.Event
    gate: LoadGate

    def begin_job(self, job_id: str) -> None: ...
    def end_job(self) -> None: ...
    def heartbeat(self) -> ipc.HostHeartbeat: ...
    def note_progress(self, phase: ProgressPhase) -> None: ...


log = logging.getLogger("engines.host")

EVENTS_ENDPOINT: Final = "inproc://job-events"
# First frame of every job-thread -> main-thread message: does the job go on, or is it over?
MARK_EVENT: Final = b"e"
MARK_FINAL: Final = b"f"

Work = ipc.RunJob | ipc.Unload | ipc.Probe


class JobThread(threading.Thread):
    """Runs the queued work and reports everything through its own PAIR socket."""

    def __init__(self, host: JobHost, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        super().__init__(name="job", daemon=True)
        self._host = host
        self._context = context
        self.work: queue.Queue[Work | None] = queue.Queue()
        self._send_lock = threading.Lock()
        self._sock: zmq.Socket[bytes] | None = None
        self._reported: list[ipc.ResidentModel] = []  # a new host holds nothing

    def run(self) -> None:
        self._sock = self._context.socket(zmq.PAIR)
        self._sock.linger = 0
        self._sock.connect(EVENTS_ENDPOINT)
        try:
            while (work := self.work.get()) is not None:
                match work:
                    case ipc.RunJob():
                        self._run_job(work)
                    case ipc.Unload():
                        self._unload(work.load_keys)
                    case ipc.Probe():
                        self._probe(work.bytes)
                    case _:
                        assert_never(work)
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
                self._sock.send_multipart([MARK_FINAL if final else MARK_EVENT, header])
            else:
                self._sock.send(MARK_FINAL if final else MARK_EVENT, zmq.SNDMORE)
                self._sock.send(header, zmq.SNDMORE)
                self._sock.send(payload, copy=False)

    def _run_job(self, job: ipc.RunJob) -> None:
        host = self._host
        engine = host.engine
        host.begin_job(job.job_id)
        started = time.monotonic()
        key = load_key(host.options.engine, job.model, job.model_source, job.task)
        ctx = JobContext(
            job_id=job.job_id,
            model=job.model,
            task=job.task,
            model_source=job.model_source,
            models_root=host.options.models_root,
            progress=self._progress_fn(job.job_id),
            log=self._log_fn(job.job_id),
            cancelled=host.cancelled,
            load_key=key,
            before_load=self._before_load_fn(job.job_id, key),
            vram_estimate_bytes=job.vram_estimate_bytes,
        )
        msg: ipc.HostMessage
        payload: bytes | None = None
        try:
            result = engine.run(ctx)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                # An engine bug: report it (retryable: another worker may be fine) and log
                # the traceback, but keep the host alive for the next job.
                traceback.print_exc()
            msg = job_failed(job.job_id, exc)
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
        # Levels and models right after the job, ahead of its result: the supervisor decides
        # on them whether to recycle this host before it hands it the next job.
        self.send(host.heartbeat())
        self._send_resident()
        self.send(msg, payload, final=True)

    def _before_load_fn(self, job_id: str, key: str) -> Callable[[int], None]:
        host = self._host
        if not host.options.ask_before_load:
            return load_at_once

        def before_load(estimate_bytes: int) -> None:
            host.gate.expect(job_id)
            # What is loaded now, after any eviction, so the supervisor decides on the truth.
            self._send_resident()
            self.send(ipc.LoadRequest(job_id, key, max(0, estimate_bytes)))
            host.note_progress("loading")
            grant = host.gate.wait(host.cancelled)
            if grant is None:
                raise EngineError("cancelled")
            if not grant.granted:
                why = grant.reason or "no reason given"
                raise LoadRefused(f"the supervisor refused to load {key}: {why}")
            if grant.unload_first:
                # Models of this host the supervisor counted on being gone for this load.
                self._unload(grant.unload_first)

        return before_load

    def _unload(self, keys: list[str]) -> None:
        engine = self._host.engine
        for key in keys:
            try:
                engine.unload(key)
            except Exception as exc:
                traceback.print_exc()
                self.send(ipc.HostLog("error", f"unloading {key} failed: {exc}"))
        self._send_resident()

    def _probe(self, nbytes: int) -> None:
        try:
            detail = self._host.engine.probe_device(nbytes)
        except Exception as exc:
            log.warning("device probe failed: %s", exc)
            self.send(ipc.ProbeResult(False, str(exc) or type(exc).__name__))
        else:
            self.send(ipc.ProbeResult(True, detail))

    def _send_resident(self) -> None:
        """What the engine keeps loaded, when it changed since the last report (most jobs
        change nothing: a message per job would cost the IPC path for nothing)."""
        try:
            models = self._host.engine.resident()
        except Exception:  # an engine bug: say nothing rather than something false
            traceback.print_exc()
            return
        if models == self._reported:
            return
        self._reported = models
        self.send(ipc.Resident(models))

    def _progress_fn(self, job_id: str) -> ProgressFn:
        def progress(phase: ProgressPhase, step: int, total: int, message: str = "") -> None:
            self._host.note_progress(phase)
            self.send(ipc.Progress(job_id, phase, step, total, message))

        return progress

    def _log_fn(self, job_id: str) -> LogFn:
        def emit(level: LogLevelName, message: str) -> None:
            self.send(ipc.HostLog(level, message, job_id))

        return emit
