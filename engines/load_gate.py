"""Where the job thread waits for the supervisor's ``LoadGrant``, and the I/O thread hands it over.

A host launched with ``--ask-before-load`` sends ``LoadRequest`` from the job thread and
blocks here until the main (I/O) thread receives the answer. The gate holds at most one
waiting load, the running job's: a grant for any other job (late, after a cancel, or for a
job this host never ran) is refused so the caller can log and drop it. A ``CancelJob`` ends
the wait at once. No timeout of its own: the supervisor answers every request, and a job
past its deadline gets its host killed. Pure threading, no sockets.
"""

from __future__ import annotations

import threading

from protocol import ipc


class LoadGate:
    """One pending load request and its answer, shared by the job and I/O threads."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job_id: str | None = None
        self._grant: ipc.LoadGrant | None = None

    def expect(self, job_id: str) -> None:
        """Job thread, before it sends ``LoadRequest``: a grant for ``job_id`` may come."""
        with self._cond:
            self._job_id, self._grant = job_id, None

    def offer(self, grant: ipc.LoadGrant) -> bool:
        """I/O thread: hand ``grant`` to the waiting load; False when none waits for it."""
        with self._cond:
            if self._job_id is None or grant.job_id != self._job_id or self._grant is not None:
                return False
            self._grant = grant
            self._cond.notify_all()
            return True

    def wake(self) -> None:
        """I/O thread, after setting the job's cancel event: end a wait now."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, cancelled: threading.Event) -> ipc.LoadGrant | None:
        """Job thread: the answer to the expected request, or None once ``cancelled`` is set
        (a grant that raced the cancel is dropped: the job ends either way)."""
        with self._cond:
            try:
                while self._grant is None and not cancelled.is_set():
                    self._cond.wait()
                return None if cancelled.is_set() else self._grant
            finally:
                self._job_id, self._grant = None, None
