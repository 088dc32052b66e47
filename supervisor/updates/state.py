"""What the updater remembers: across re-executions in files beside the config (the release
on probation, releases rolled back), and in this process for ``status`` and the metric."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

# A release rolled back is not tried again for this long (a newer one is tried at once).
SKIP_ROLLED_BACK_S: Final = 24 * 3600.0


def updates_dir(config_path: Path) -> Path:
    return config_path.parent / "updates"


# Starts of a release on probation (systemd restarting one that crashes) before it counts
# as failed, whatever the time left.
PROBATION_STARTS: Final = 3


class Probation(msgspec.Struct, frozen=True):
    """A release being installed, then on probation: it must reach a studio ``welcome``
    before ``deadline_at`` (wall clock), within ``PROBATION_STARTS`` starts. Written before
    pip runs, so an install cut short (a SIGKILL mid-pip) is found and healed at the next
    start (``from_version`` is still what runs)."""

    from_version: str
    to_version: str
    wheel: str  # the previous release, kept for the rollback
    deadline_s: float
    deadline_at: float = 0.0
    starts: int = 0

    def started(self) -> Probation:
        return msgspec.structs.replace(self, starts=self.starts + 1)

    def expired(self, now: float) -> bool:
        return now >= self.deadline_at or self.starts > PROBATION_STARTS


def _probation_file(config_path: Path) -> Path:
    return updates_dir(config_path) / "probation.json"


def write_probation(config_path: Path, probation: Probation) -> None:
    path = _probation_file(config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(probation))


def read_any_probation(config_path: Path) -> Probation | None:
    try:
        return msgspec.json.decode(_probation_file(config_path).read_bytes(), type=Probation)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def read_probation(config_path: Path, running: str) -> Probation | None:
    """The probation of ``running``, if this process is the release on probation."""
    probation = read_any_probation(config_path)
    return probation if probation is not None and probation.to_version == running else None


def end_probation(config_path: Path) -> None:
    _probation_file(config_path).unlink(missing_ok=True)


def _rolled_back_file(config_path: Path) -> Path:
    return updates_dir(config_path) / "rolled-back.json"


def rolled_back(config_path: Path) -> dict[str, float]:
    try:
        data = json.loads(_rolled_back_file(config_path).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def remember_rolled_back(config_path: Path, version: str) -> None:
    known = rolled_back(config_path) | {version: time.time()}
    path = _rolled_back_file(config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known))


def recently_rolled_back(config_path: Path, version: str, now: float) -> bool:
    when = rolled_back(config_path).get(version)
    return when is not None and now - when < SKIP_ROLLED_BACK_S


@dataclass
class UpdateStatus:
    """This process's last word on updates, for ``status`` and the metric."""

    checking: bool = False  # the periodic check runs (auto_update_enabled)
    newest: str | None = None
    available: bool = False
    checked_at: float | None = None  # time.time()
    error: str | None = None
    note: str | None = None  # why it is not installed, or what happens


STATUS = UpdateStatus()
