"""One running job's clocks: when its deadline runs out, when it last progressed, and whether
it is downloading its model and when bytes last arrived. Pure: the slot core feeds it what
the host reports (each ``Progress`` and the state in each heartbeat) with the time, and the
watchdog's rules (``liveness``) read it. It must not decide anything itself.

A download is not generation: while the host downloads, the job deadline does not run (the
download limits of ``liveness`` do), and the deadline clock starts when the download phase
ends, so a large model on a slow link is never killed for the time its bytes took. The
phase is what the host says it is doing: a ``downloading`` progress report or heartbeat
starts it, a ``loading`` or ``generating`` one ends it. A host sends its heartbeats and its
progress reports from one thread in the order its state changed, so a heartbeat never
shows a phase older than a progress report that arrived before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DOWNLOADING: Final = "downloading"
_WORKING: Final = frozenset({"loading", "generating"})


@dataclass
class JobClock:
    deadline_s: float  # as the job asked, for the message
    counting_from: float  # monotonic: the job's start, then the end of its last download
    progress_at: float  # monotonic time of the last progress of any kind
    downloading_since: float | None = None  # monotonic; None: not downloading
    bytes_at: float = 0.0  # monotonic time bytes last arrived, while downloading
    _last_bytes: tuple[str, int] | None = field(default=None, repr=False)

    @property
    def deadline(self) -> float:
        """When the job deadline runs out (monotonic); it does not run while downloading."""
        return self.counting_from + self.deadline_s

    @property
    def downloading(self) -> bool:
        return self.downloading_since is not None

    def progressed(self, phase: str, now: float, file: str = "", done: int = 0) -> None:
        """A progress report: ``done`` is bytes of ``file`` when ``phase`` is downloading."""
        self.progress_at = now
        self.phase_seen(phase, now)
        if phase == DOWNLOADING and (file, done) != self._last_bytes:
            self._last_bytes = (file, done)
            self.bytes_at = now

    def phase_seen(self, phase: str, now: float) -> None:
        """What the host says it is doing (a heartbeat's state, a progress report's phase)."""
        if phase == DOWNLOADING:
            if self.downloading_since is None:
                self.downloading_since = self.bytes_at = now
                self._last_bytes = None
        elif phase in _WORKING and self.downloading_since is not None:
            self.downloading_since = None
            self.counting_from = now  # the job deadline starts now
