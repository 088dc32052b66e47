"""Masks every secret the worker holds in text the status page sends: the config's tokens
and registration secrets (every lane's) and the page's own action secret.

The page never puts one into its JSON on purpose; this is the net under that, applied to
each whole answer, so a secret that found its way into a log line, an error text or a
prompt preview is replaced before it leaves the process. The config is re-read when its
file changed (registration writes a token while the supervisor runs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

from supervisor.config import SECRET_FIELDS, WorkerConfig, current_config
from supervisor.errors import WorkerError

MASK: Final = b"[redacted]"
MIN_SECRET_CHARS: Final = 6  # shorter values would mask ordinary words; no real secret is


def config_secrets(cfg: WorkerConfig) -> set[str]:
    found: set[str] = set()
    for holder in (cfg, *cfg.lane.values()):
        for name in SECRET_FIELDS:
            value = getattr(holder, name, None)
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
                found.add(value)
    return found


class SecretMask:
    def __init__(self, config_path: Path | None, extra: Callable[[], str | None]) -> None:
        self.config_path = config_path
        self.extra = extra  # the action secret, once there is one
        self._stamp: tuple[int, int] | None = None
        self._secrets: set[str] = set()

    def _refresh(self) -> None:
        if self.config_path is None:
            return
        try:
            info = self.config_path.stat()
        except OSError:
            return  # keep what was known: masking too much beats too little
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        with contextlib.suppress(WorkerError):
            self._secrets |= config_secrets(current_config(self.config_path))
            self._stamp = stamp

    def scrub(self, body: bytes) -> bytes:
        self._refresh()
        secrets = set(self._secrets)
        extra = self.extra()
        if extra:
            secrets.add(extra)
        for secret in sorted(secrets, key=len, reverse=True):
            body = body.replace(secret.encode(), MASK)
        return body
