"""What the status page may change: pause, resume and the VRAM threshold, with the texts
``supervisor pause|resume|set-threshold`` print, and only for a request that carries the
action secret in the ``X-Worker-Secret`` header.

The secret is made fresh at every start and written 0600 beside the control socket
(``supervisor.secret`` next to ``supervisor.sock``), so whoever may use the control socket
may read it, and nobody else; it is removed at exit. It travels in a header only, never in
a URL (URLs end up in browser history, proxies and logs), and is compared in constant time.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import anyio
import msgspec

from supervisor.errors import WorkerError
from supervisor.lanes.lane import Lane
from supervisor.ops.control import set_lanes_paused
from supervisor.threshold import save_threshold

SECRET_HEADER: Final = "x-worker-secret"
SECRET_SUFFIX: Final = ".secret"


def secret_path(control_socket: Path) -> Path:
    return control_socket.with_suffix(SECRET_SUFFIX)


class ActionReply(msgspec.Struct):
    ok: bool
    message: str


class LaneRequest(msgspec.Struct, forbid_unknown_fields=True):
    lane: str | None = None  # one lane; None: every lane


class ThresholdRequest(msgspec.Struct, forbid_unknown_fields=True):
    gb: float
    lane: str | None = None


@dataclass
class ActionSecret:
    """The secret of one run; ``write`` makes and saves it, ``remove`` deletes the file."""

    path: Path
    value: str | None = None

    def write(self) -> None:
        """Raises OSError when the file cannot be written."""
        value = secrets.token_urlsafe(32)
        staged = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # a file left from a crash may have other bits
            out.write(value + "\n")
        staged.replace(self.path)
        self.value = value

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.value = None

    def matches(self, given: str | None) -> bool:
        if self.value is None or not given:
            return False
        return hmac.compare_digest(given.strip().encode(), self.value.encode())


Command = Literal["pause", "resume"]


class PageActions:
    def __init__(self, lanes: list[Lane], config_path: Path, secret: ActionSecret) -> None:
        self.lanes = lanes
        self.config_path = config_path
        self.secret = secret

    def set_paused(self, cmd: Command, lane: str | None) -> ActionReply:
        reply = set_lanes_paused(self.lanes, cmd == "pause", lane)
        if not reply.ok:
            return ActionReply(False, f"the supervisor refused `{cmd}`: {reply.message}")
        return ActionReply(True, reply.message)

    async def set_threshold(self, request: ThresholdRequest) -> ActionReply:
        names = [lane.name for lane in self.lanes]
        if request.lane is not None and request.lane not in names:
            known = ", ".join(names)
            return ActionReply(False, f"no lane `{request.lane}` here; the lanes are {known}")
        try:
            text = await anyio.to_thread.run_sync(
                save_threshold, self.config_path, request.gb, request.lane
            )
        except WorkerError as exc:
            return ActionReply(False, str(exc))
        return ActionReply(True, text)
