"""Errors of the local studio, server and client side.

Nothing here does I/O. Each class says who raises it and when::

    LocalStudioError                     base of everything this package raises on purpose
    +-- StudioConfigError                LocalStudio: unsafe or unusable settings (a
    |                                    non-loopback bind without an admin token, a data
    |                                    dir that is not a directory, a newer schema)
    +-- StudioStartupError               LocalStudio.serve: uvicorn could not bind
    +-- DataDirBusyError                 LocalStudio.serve: another studio holds the data
    |                                    dir's lock (``data_lock``)
    +-- ProtocolViolationError           the dispatcher: a frame before hello, a second
    |                                    hello, or one naming a job this session does not
    |                                    hold; answered ``error{protocol_violation}`` +
    |                                    close 4002, never raised out of the server
    +-- StudioApiError                   client: the studio answered a non-2xx status
    +-- JobWaitTimeoutError              client.wait_for_job: the deadline passed first

Peer garbage (undecodable frames, bad JSON bodies) is answered on the wire (an error
frame or a 4xx) and logged; it never raises out of the server. An event a job's or a
session's table does not allow raises ``protocol.state_machine.IllegalTransition`` (the
project's one state-machine error, not part of this tree): it is a bug in the caller, and
nothing was written or changed.
"""

from __future__ import annotations


class LocalStudioError(Exception):
    """Base class of the local studio's own errors."""


class StudioConfigError(LocalStudioError):
    """The server settings are unsafe or unusable; the message says which and why."""


class StudioStartupError(LocalStudioError):
    """The HTTP/WebSocket server could not start (usually: the port is taken)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"local studio could not listen on {host}:{port}")
        self.host = host
        self.port = port


class DataDirBusyError(LocalStudioError):
    """Another studio process serves this data dir (it holds ``studio.lock``): two on one
    SQLite database would hand out the same jobs twice. ``pid`` is the holder's, when it
    wrote one."""

    def __init__(self, data_dir: str, pid: int | None) -> None:
        who = f"another local studio (pid {pid})" if pid is not None else "another local studio"
        super().__init__(f"{who} is serving the data dir {data_dir}")
        self.data_dir = data_dir
        self.pid = pid


class ProtocolViolationError(LocalStudioError):
    """A worker frame the session must refuse; the message goes into the error frame."""


class StudioApiError(LocalStudioError):
    """The local studio answered a request with a non-2xx status."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path} failed: {status} — {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


class JobWaitTimeoutError(LocalStudioError):
    """wait_for_job gave up: the job had not reached a wanted status before the deadline."""

    def __init__(self, job_id: str, status: str, timeout_s: float) -> None:
        super().__init__(f"job {job_id} still {status} after {timeout_s:g}s of waiting")
        self.job_id = job_id
        self.status = status
        self.timeout_s = timeout_s
