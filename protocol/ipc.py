"""Supervisor <-> engine host messages (design.md, "IPC"), msgpack over ZeroMQ.

One tagged union per direction. Both ends ship together, so unknown fields are refused and
the first message a host sends (``Ready``) carries ``IPC_VERSION`` and the per-spawn token
the supervisor handed it. Big binary results never go inside msgpack: a ``JobDone`` with
``payload_bytes > 0`` is followed by exactly one raw ZeroMQ frame holding them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from protocol.tasks import ModelSource, Task

IPC_VERSION: Final = 1

HostState = Literal["idle", "downloading", "loading", "generating"]
ProgressPhase = Literal["downloading", "loading", "generating"]
LogLevelName = Literal["debug", "info", "warn", "error"]


class _Msg(msgspec.Struct, forbid_unknown_fields=True, tag_field="t"):
    pass


# --- host -> supervisor -------------------------------------------------------------------


class Ready(_Msg, tag="ready"):
    version: int
    token: str
    engine: str
    slot: str
    pid: int
    models_per_kind: dict[str, list[str]]
    library_versions: dict[str, str]


class HostHeartbeat(_Msg, tag="hb"):
    state: HostState
    job_id: str | None
    rss_bytes: int
    vram_bytes: int | None
    jobs_done: int
    model_loads: int
    progress_seq: int


class Progress(_Msg, tag="progress"):
    job_id: str
    phase: ProgressPhase
    step: int
    total: int
    message: str = ""


class JobDone(_Msg, tag="done"):
    job_id: str
    elapsed_ms: int
    json: Any = None
    ext: str | None = None
    payload_bytes: int = 0


class JobFailed(_Msg, tag="failed"):
    job_id: str
    error: str
    retryable: bool
    reason: str


class HostLog(_Msg, tag="log"):
    level: LogLevelName
    message: str
    job_id: str | None = None


HostMessage = Ready | HostHeartbeat | Progress | JobDone | JobFailed | HostLog

# --- supervisor -> host -------------------------------------------------------------------


class RunJob(_Msg, tag="run"):
    job_id: str
    model: str
    task: Task
    model_source: ModelSource
    deadline_s: float


class CancelJob(_Msg, tag="cancel"):
    job_id: str


class Shutdown(_Msg, tag="shutdown"):
    grace_s: float


SupervisorMessage = RunJob | CancelJob | Shutdown

# Failure reason codes a host reports (``JobFailed.reason``).
REASON_UNSUPPORTED: Final = "unsupported"
REASON_ENGINE_ERROR: Final = "engine_error"
REASON_BAD_INPUT: Final = "bad_input"
REASON_CANCELLED: Final = "cancelled"

_encoder: Final = msgspec.msgpack.Encoder()
_host_decoder: Final[msgspec.msgpack.Decoder[HostMessage]] = msgspec.msgpack.Decoder(HostMessage)
_supervisor_decoder: Final[msgspec.msgpack.Decoder[SupervisorMessage]] = msgspec.msgpack.Decoder(
    SupervisorMessage
)


class IpcDecodeError(ValueError):
    """Garbage on the IPC socket; the peer is logged and refused, never trusted."""


def encode(msg: HostMessage | SupervisorMessage) -> bytes:
    return _encoder.encode(msg)


def decode_host(data: bytes | memoryview) -> HostMessage:
    try:
        return _host_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise IpcDecodeError(f"bad host message: {exc}") from None


def decode_supervisor(data: bytes | memoryview) -> SupervisorMessage:
    try:
        return _supervisor_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise IpcDecodeError(f"bad supervisor message: {exc}") from None
