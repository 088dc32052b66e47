"""The config as the running supervisor sees it: re-read when the file changes on disk,
so ``supervisor set-threshold`` reaches the studio with the next heartbeat, no reconnect.

``update`` writes only the keys it changes, so an edit the operator made to another key
since the last read is kept, not overwritten with the value this process remembers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from supervisor.config import WorkerConfig, load_config, save_config, secure_config
from supervisor.errors import ConfigError

log = logging.getLogger("supervisor.config")


class LiveConfig:
    def __init__(self, path: Path, initial: WorkerConfig | None = None) -> None:
        self.path = path
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
        return self._cfg

    def update(self, **changes: object) -> WorkerConfig:
        """Change fields, save atomically, and serve the new values at once."""
        before = self.current()
        cfg = msgspec.structs.replace(before, **changes)
        save_config(self.path, cfg, previous=before)
        self._cfg = cfg
        self._stamp = self._stat()
        return cfg
