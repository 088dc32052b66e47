"""Errors an engine raises while running a job.

    EngineError            any job failure; retryable (the studio requeues the job)
    ├── UnsupportedTask    the engine does not serve this task kind; not retryable
    ├── ProvisionError     a model file or input image could not be fetched or verified
    └── LoadRefused        the supervisor refused a model load (no GPU memory); retryable

The host turns them into ``JobFailed`` messages (``engines.job_failure``); an exception of
any other type is an engine bug and is reported retryable with its type name, never
swallowed. Where the library's words say the GPU ran out of memory or faulted, a generic
reason becomes ``vram_oom`` or ``device_error``.
"""

from __future__ import annotations

from protocol.ipc import REASON_NO_MEMORY


class EngineError(Exception):
    """A job failed; the studio may retry it elsewhere or later."""

    retryable: bool = True
    reason: str = "engine_error"


class UnsupportedTask(EngineError):
    """Raised by an engine asked for a kind it never serves (protocol.md §9.1 wording)."""

    retryable = False
    reason = "unsupported"

    def __init__(self, engine: str, kind: str) -> None:
        super().__init__(f"{engine} engine cannot serve {kind} tasks")
        self.engine = engine
        self.kind = kind


class ProvisionError(EngineError):
    """A download, cache or verification step failed (the message names file and cause)."""

    reason = "provision"


class LoadRefused(EngineError):
    """Raised by ``JobContext.before_load`` when the supervisor answers ``LoadGrant(granted=
    False)``: the model does not fit on this GPU now. Another worker, or this one later, may
    have room, so the job is retryable."""

    reason = REASON_NO_MEMORY
