"""Supervisor <-> engine host messages (design.md, "IPC"), msgpack over ZeroMQ.

One tagged union per direction. Both ends ship together, so unknown fields are refused and
the first message a host sends (``Ready``) carries ``IPC_VERSION`` and the per-spawn token
the supervisor handed it. Big binary results never go inside msgpack: a ``JobDone`` with
``payload_bytes > 0`` is followed by exactly one raw ZeroMQ frame holding them.

GPU memory: a host launched with ``--ask-before-load`` sends ``LoadRequest`` before it loads
a model and waits for ``LoadGrant``; it reports every change of what it keeps loaded with
``Resident``, and unloads what ``Unload`` names. ``Probe`` asks a fresh host to prove its GPU
works (initialise the backend, allocate and free a small buffer): ``ProbeResult``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from protocol.tasks import ModelSource, Task

IPC_VERSION: Final = 2

HostState = Literal["idle", "downloading", "loading", "generating"]
# What a host computes on, as its inference library reports it ("simulated": a simulated GPU).
Backend = Literal["cuda", "rocm", "vulkan", "metal", "cpu", "simulated"]
ProgressPhase = Literal["downloading", "loading", "generating"]
LogLevelName = Literal["debug", "info", "warn", "error"]


class _Msg(msgspec.Struct, forbid_unknown_fields=True, tag_field="t"):
    pass


class ComputeDevice(msgspec.Struct, forbid_unknown_fields=True):
    """Where a host's engine computes: the backend and, on a GPU, the device it sees."""

    backend: Backend
    name: str = ""
    uuid: str = ""  # NVML's form, ``GPU-…``, where the backend can tell


class ResidentModel(msgspec.Struct, forbid_unknown_fields=True):
    """One model a host keeps loaded, by its load key (``engines.load_keys``)."""

    load_key: str
    size_bytes: int  # the host's own figure (0 when it cannot tell); NVML measures the rest


# --- host -> supervisor -------------------------------------------------------------------


class Ready(_Msg, tag="ready"):
    version: int
    token: str
    engine: str
    slot: str
    pid: int
    models_per_kind: dict[str, list[str]]
    library_versions: dict[str, str]
    compute: ComputeDevice


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


class LoadRequest(_Msg, tag="load_request"):
    """About to load ``load_key`` for ``job_id`` (after any download); waits for a grant."""

    job_id: str
    load_key: str
    estimate_bytes: int  # the host's own guess (file sizes); 0 when it has none


class Resident(_Msg, tag="resident"):
    """Everything the host keeps loaded now, most recently used last."""

    models: list[ResidentModel]


class ProbeResult(_Msg, tag="probe_result"):
    ok: bool
    detail: str


HostMessage = (
    Ready
    | HostHeartbeat
    | Progress
    | JobDone
    | JobFailed
    | HostLog
    | LoadRequest
    | Resident
    | ProbeResult
)

# --- supervisor -> host -------------------------------------------------------------------


class RunJob(_Msg, tag="run"):
    job_id: str
    model: str
    task: Task
    model_source: ModelSource
    deadline_s: float
    vram_estimate_bytes: int = 0  # the studio's ``vramGbEstimate`` (simulated GPUs load that)


class CancelJob(_Msg, tag="cancel"):
    job_id: str


class Shutdown(_Msg, tag="shutdown"):
    grace_s: float


class LoadGrant(_Msg, tag="load_grant"):
    """The answer to ``LoadRequest``: load now (after unloading ``unload_first``, models of
    this host the supervisor needs gone), or fail the job with ``reason``."""

    job_id: str
    granted: bool
    reason: str = ""
    unload_first: list[str] = msgspec.field(default_factory=list)


class Unload(_Msg, tag="unload"):
    """Unload these models if loaded (between jobs); the host answers with ``Resident``."""

    load_keys: list[str]


class Probe(_Msg, tag="probe"):
    """Initialise the GPU backend, allocate and free ``bytes``, answer ``ProbeResult``."""

    bytes: int


SupervisorMessage = RunJob | CancelJob | Shutdown | LoadGrant | Unload | Probe

# Failure reason codes a host reports (``JobFailed.reason``).
REASON_UNSUPPORTED: Final = "unsupported"
REASON_ENGINE_ERROR: Final = "engine_error"
REASON_BAD_INPUT: Final = "bad_input"
REASON_CANCELLED: Final = "cancelled"
REASON_VRAM_OOM: Final = "vram_oom"  # the GPU ran out of memory (the engine's own words)
REASON_DEVICE_ERROR: Final = "device_error"  # the GPU faulted (illegal address, launch failure)
REASON_NO_MEMORY: Final = "vram_unavailable"  # the supervisor refused the load: it cannot fit

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
