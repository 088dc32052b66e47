"""Studio wire frames (protocol.md §2-§6): WebSocket frames both ways, capabilities, log
entries, registration bodies, close codes.

Every frame is one JSON text message tagged on ``type`` with the camelCase variant name.
What the worker sends omits absent optional fields (never ``null``); what it receives
accepts an explicit ``null`` as absent and ignores unknown fields, because the studio ships
on its own schedule. An unknown ``type`` fails to decode with a message naming it.
"""

from __future__ import annotations

import enum
from typing import Any, Final, Literal

import msgspec

from protocol.tasks import ModelSource, Task, TaskKindName

SUBPROTOCOL: Final = "studio-worker-v1"
API_PREFIX: Final = "/graphics/api"

UserPresence = Literal["idle", "active"]
LogLevel = Literal["info", "warn", "error"]
RejectCode = Literal["busy", "paused"]

# Error codes the studio sends in ``error`` frames (snake_case on the wire).
ERROR_AUTH_FAILED: Final = "auth_failed"
ERROR_PROTOCOL_VIOLATION: Final = "protocol_violation"
ERROR_DUPLICATE_WORKER: Final = "duplicate_worker"
ERROR_WORKER_DELETED: Final = "worker_deleted"
ERROR_INTERNAL: Final = "internal_error"
ERROR_CODES: Final = (
    ERROR_AUTH_FAILED,
    ERROR_PROTOCOL_VIOLATION,
    ERROR_DUPLICATE_WORKER,
    ERROR_WORKER_DELETED,
    ERROR_INTERNAL,
)


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    AUTH_FAILED = 4001
    PROTOCOL_VIOLATION = 4002
    DUPLICATE_WORKER = 4003
    WORKER_DELETED = 4004


# RFC 6455 §7.4.1: the receiver refuses a message larger than it takes. Not a studio code
# (``CloseCode``): any WebSocket server closes so, the local studio included.
CLOSE_MESSAGE_TOO_BIG: Final = 1009
# The largest frame a studio takes from a worker unless configured otherwise: the cloud
# studio's own limit is not published, 16 MiB is a WebSocket server's usual default
# (uvicorn's), and the local studio enforces it. A worker checks its frames against its
# config's ``max_frame_bytes`` (this by default) before it sends them.
DEFAULT_MAX_FRAME_BYTES: Final = 16 * 2**20

_CLOSE_FOR_ERROR: Final = {
    ERROR_AUTH_FAILED: CloseCode.AUTH_FAILED,
    ERROR_PROTOCOL_VIOLATION: CloseCode.PROTOCOL_VIOLATION,
    ERROR_DUPLICATE_WORKER: CloseCode.DUPLICATE_WORKER,
    ERROR_WORKER_DELETED: CloseCode.WORKER_DELETED,
}


def close_code_for_error(code: str) -> CloseCode:
    """The close code the studio pairs with an error code (``internal_error`` -> 1000)."""
    return _CLOSE_FOR_ERROR.get(code, CloseCode.NORMAL)


class Capabilities(msgspec.Struct, rename="camel"):
    """What the worker advertises in ``hello``, every ``heartbeat`` and the register request.

    Every field is always serialised except ``userPresence`` (omitted while unknown) and
    ``maxConcurrentJobs`` (this worker's concurrency, ignored by studios that predate it).
    Fields newer than the first studio default when a peer leaves them out.
    """

    machine_name: str
    username: str
    agent_version: str
    engine: str
    vram_total_gb: float
    vram_threshold_gb: float
    auto_enabled: bool
    auto_start: bool
    auto_update: bool = True
    start_minimised: bool = True
    only_when_idle: bool = False
    user_presence: UserPresence | msgspec.UnsetType | None = msgspec.UNSET
    supported_models: list[str] = msgspec.field(default_factory=list)
    task_kinds: list[TaskKindName] = msgspec.field(default_factory=list)
    supported_models_per_kind: dict[str, list[str]] = msgspec.field(default_factory=dict)
    max_concurrent_jobs: int | msgspec.UnsetType | None = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.user_presence is None:
            self.user_presence = msgspec.UNSET
        if self.max_concurrent_jobs is None:
            self.max_concurrent_jobs = msgspec.UNSET


class LogEntry(msgspec.Struct, rename="camel", omit_defaults=True):
    ts: str
    level: LogLevel
    category: str
    message: str
    job_id: str | None = None


# --- worker -> studio ---------------------------------------------------------------------


class _Inbound(msgspec.Struct, rename="camel", omit_defaults=True, tag_field="type"):
    pass


class Hello(_Inbound, tag="hello"):
    auth_token: str
    capabilities: Capabilities


class Heartbeat(_Inbound, tag="heartbeat"):
    capabilities: Capabilities
    current_job_id: str | None = None


class Accept(_Inbound, tag="accept"):
    job_id: str


class Reject(_Inbound, tag="reject"):
    job_id: str
    reason: str
    code: RejectCode | None = None


class CompleteJson(_Inbound, tag="completeJson"):
    job_id: str
    result: Any
    prompt: str | None = None


class Fail(_Inbound, tag="fail"):
    job_id: str
    error: str
    retryable: bool


class LogBatch(_Inbound, tag="logBatch"):
    entries: list[LogEntry]


class ReadyForMore(_Inbound, tag="readyForMore"):
    """Parseable for compatibility; never sent (it raced the studio's own nudge)."""


WorkerInbound = Hello | Heartbeat | Accept | Reject | CompleteJson | Fail | LogBatch | ReadyForMore
"""Frames the worker SENDS (worker -> studio). The name is the studio's own (protocol.md
§2.3): "inbound" from the studio's side, which is why it reads backwards here."""

# --- studio -> worker ---------------------------------------------------------------------


class JobOfferClaim(msgspec.Struct, rename="camel"):
    job_id: str
    game_id: str
    asset_name: str
    model: str
    vram_gb_estimate: float
    task: Task
    model_source: ModelSource


class _Outbound(msgspec.Struct, rename="camel", omit_defaults=True, tag_field="type"):
    pass


class Welcome(_Outbound, tag="welcome"):
    worker_id: str
    server_time: str


class Offer(_Outbound, tag="offer"):
    claim: JobOfferClaim


class HeartbeatAck(_Outbound, tag="heartbeatAck"):
    pass


class CompleteAck(_Outbound, tag="completeAck"):
    job_id: str


class FailAck(_Outbound, tag="failAck"):
    job_id: str


class Error(_Outbound, tag="error"):
    code: str
    message: str


WorkerOutbound = Welcome | Offer | HeartbeatAck | CompleteAck | FailAck | Error
"""Frames the worker RECEIVES (studio -> worker). The name is the studio's own (protocol.md
§2.3): "outbound" from the studio's side."""

# --- registration (HTTP, §6.2) ------------------------------------------------------------


class RegisterRequest(msgspec.Struct, rename="camel"):
    install_id: str
    registration_secret_hash: str
    capabilities: Capabilities
    user_agent: str


class RegisterRequestAccepted(msgspec.Struct, rename="camel"):
    request_id: str
    status: str


class _PollStatus(msgspec.Struct, rename="camel", tag_field="status"):
    pass


class RegistrationPending(_PollStatus, tag="pending"):
    pass


class RegistrationApproved(_PollStatus, tag="approved"):
    worker_id: str
    auth_token: str


class RegistrationRejected(_PollStatus, tag="rejected"):
    reason: str = ""


RegistrationStatus = RegistrationPending | RegistrationApproved | RegistrationRejected

# --- codecs, built once -------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()
_inbound_decoder: Final[msgspec.json.Decoder[WorkerInbound]] = msgspec.json.Decoder(WorkerInbound)
_outbound_decoder: Final[msgspec.json.Decoder[WorkerOutbound]] = msgspec.json.Decoder(
    WorkerOutbound
)


class FrameError(ValueError):
    """A text frame that is not valid JSON or not a known frame; the message says why."""


def encode_frame(frame: WorkerInbound | WorkerOutbound) -> str:
    """One frame as the JSON text the WebSocket carries."""
    return _encoder.encode(frame).decode()


def encode_json(value: object) -> bytes:
    """Any wire struct (or plain value) as JSON bytes, with the studio's field names."""
    return _encoder.encode(value)


def decode_outbound(text: str | bytes) -> WorkerOutbound:
    """Decode a studio -> worker frame; raises FrameError naming what is wrong."""
    try:
        return _outbound_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"unparseable studio frame: {exc}") from None


def decode_inbound(text: str | bytes) -> WorkerInbound:
    """Decode a worker -> studio frame (the local studio's side); raises FrameError."""
    try:
        return _inbound_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise FrameError(f"unparseable worker frame: {exc}") from None


def frame_label(frame: WorkerInbound | WorkerOutbound) -> str:
    """The wire ``type`` of a frame, for log lines."""
    label: str = frame.__struct_config__.tag  # type: ignore[assignment]
    return label
