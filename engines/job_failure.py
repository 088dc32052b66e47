"""The ``JobFailed`` a host reports for an exception out of an engine, with its reason code.

An ``EngineError`` carries its own reason and retryability; any other exception is an engine
bug (retryable: another worker may be fine). Either way, when the library's words say the GPU
ran out of memory or the device faulted (``engines.failure_text``), the generic reason
becomes ``vram_oom`` or ``device_error`` (retryable), so the supervisor can free memory or
probe the device instead of blaming the job. A specific reason (unsupported, provision, the
supervisor's own refusal) is kept as it is. Pure: no I/O, no logging.
"""

from __future__ import annotations

from typing import Final, assert_never

from engines.errors import EngineError
from engines.failure_text import FailureKind, classify_failure_text
from protocol import ipc

REASON_ENGINE_BUG: Final = "engine_bug"
# Reasons that only say "the engine failed": the text may say more precisely why.
_GENERIC_REASONS: Final = frozenset({ipc.REASON_ENGINE_ERROR, REASON_ENGINE_BUG})


def job_failed(job_id: str, exc: Exception) -> ipc.JobFailed:
    """The message that reports ``exc`` as the end of job ``job_id``."""
    if isinstance(exc, EngineError):
        error, retryable, reason = str(exc), exc.retryable, exc.reason
    else:
        error, retryable, reason = f"{type(exc).__name__}: {exc}", True, REASON_ENGINE_BUG
    if reason in _GENERIC_REASONS:
        kind = classify_failure_text(error)
        match kind:
            case FailureKind.VRAM_OOM:
                reason, retryable = ipc.REASON_VRAM_OOM, True
            case FailureKind.DEVICE_ERROR:
                reason, retryable = ipc.REASON_DEVICE_ERROR, True
            case FailureKind.RAM_OOM | None:
                pass  # host memory: no GPU reason to give, the generic one stands
            case _:
                assert_never(kind)
    return ipc.JobFailed(job_id, error, retryable, reason)
