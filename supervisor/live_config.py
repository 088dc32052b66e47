"""The config as the running supervisor sees it: re-read when the file changes on disk,
so ``supervisor set-threshold`` reaches the studio with the next heartbeat, no reconnect.

``update`` writes only the keys it changes, so an edit the operator made to another key
since the last read is kept, not overwritten with the value this process remembers.
A lane's live config (``table``) serves the lane's view (``supervisor.lane_identity``):
its identity in the top-level fields, saved to its own ``[lane.NAME]`` table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from supervisor.config import IDENTITY_FIELDS, WorkerConfig, load_config, secure_config
from supervisor.errors import ConfigError
from supervisor.lane_identity import lane_view, save_lane_config

log = logging.getLogger("supervisor.config")


class LiveConfig:
    def __init__(
        self,
        path: Path,
        initial: WorkerConfig | None = None,
        *,
        table: str | None = None,
        lane: str | None = None,
    ) -> None:
        self.path = path
        self.table = table  # where the lane's identity lives; None: the top-level keys
        self.lane = lane  # the lane's name, for its own vram_threshold_gb
        self._cfg = initial if initial is not None else load_config(path)
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> WorkerConfig:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                self._cfg = load_config(self.path)
                self._stamp = stamp
                secure_config(self.path, self._cfg)
            except ConfigError as exc:
                # Keep serving with the last good config; the operator sees why.
                log.warning("config change ignored: %s", exc)
                self._stamp = stamp
        return lane_view(self._cfg, self.table, self.lane)

    def update(self, **changes: object) -> WorkerConfig:
        """Change fields, save atomically, and serve the new values at once. A lane after
        the first changes identity fields only (the rest of the file is every lane's)."""
        if self.table is not None and not set(changes) <= set(IDENTITY_FIELDS):
            raise ValueError(f"lane {self.table} may change only {', '.join(IDENTITY_FIELDS)}")
        before = self.current()
        cfg = msgspec.structs.replace(before, **changes)
        self._cfg = save_lane_config(self.path, self.table, cfg, before)
        self._stamp = self._stat()
        return lane_view(self._cfg, self.table, self.lane)
