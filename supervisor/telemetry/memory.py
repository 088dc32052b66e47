"""What the scrubber must hunt for, kept while the supervisor runs: the prompts of recent
jobs and the secrets of the config file (which registration rewrites while it runs)."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from pathlib import Path
from typing import Final

from supervisor.config import SECRET_FIELDS, WorkerConfig, load_config

# Jobs whose prompts are still hunted for: an engine host's stderr or a late log line may
# quote a prompt a while after its job ended.
PROMPTS_KEPT: Final = 1024


class PromptMemory:
    def __init__(self, size: int = PROMPTS_KEPT) -> None:
        self._prompts: deque[str] = deque(maxlen=size)
        self._lock = threading.Lock()  # the transport's thread reads; the event loop writes

    def remember(self, prompt: str | None) -> None:
        if prompt and prompt.strip():
            with self._lock:
                self._prompts.append(prompt)

    def __call__(self) -> list[str]:
        with self._lock:
            return list(self._prompts)


def config_secrets(cfg: WorkerConfig) -> set[str]:
    """Every secret value of the config: the top level's and each lane table's."""
    tables: list[object] = [cfg, *cfg.lane.values()]
    found = {getattr(t, name, None) for t in tables for name in SECRET_FIELDS}
    found.add(cfg.telemetry_dsn)
    return {s for s in found if isinstance(s, str) and s}


class SecretSource:
    """The config file's secrets, read again when the file changes (registration writes a
    token after the telemetry started), fixed ones (the DSN), and secret files (the status
    page's), read as they change. Secrets once seen stay secret (a rotated token too)."""

    def __init__(
        self, config_path: Path, fixed: set[str], secret_files: tuple[Path, ...] = ()
    ) -> None:
        self._path = config_path
        self._fixed = set(fixed)
        self._files: dict[Path, int] = {path: -1 for path in secret_files}  # path -> mtime
        self._stamp: int | None = None
        self._cached: set[str] = set()
        self.worker_ids: list[str] = []  # the top level's first, then each lane's
        self._lock = threading.Lock()

    def __call__(self) -> set[str]:
        with self._lock:
            stamp = _mtime(self._path)
            if stamp is not None and stamp != self._stamp:
                try:
                    cfg = load_config(self._path)
                except Exception:  # a half-written file: keep the secrets read before
                    cfg = None
                if cfg is not None:
                    self._cached |= config_secrets(cfg)
                    ids = [cfg.worker_id, *(t.worker_id for _, t in sorted(cfg.lane.items()))]
                    self.worker_ids = [i for i in ids if i]
                    self._stamp = stamp
            for path, seen in self._files.items():
                stamp = _mtime(path)
                if stamp is not None and stamp != seen:
                    with contextlib.suppress(OSError):
                        self._cached.add(path.read_text().strip())
                        self._files[path] = stamp
            return {s for s in self._cached | self._fixed if s}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
