"""Errors an engine raises while running a job.

    EngineError            any job failure; retryable (the studio requeues the job)
    ├── UnsupportedTask    the engine does not serve this task kind; not retryable
    ├── ProvisionError     a model file or input image could not be fetched or verified
    ├── LoadRefused        the supervisor refused a model load (no GPU memory); retryable
    ├── SchemaRefused      an llm task's jsonSchema cannot be enforced; not retryable
    └── InvalidOutput      an llm answer still fails its jsonSchema after a retry; not retryable

The host turns them into ``JobFailed`` messages (``engines.job_failure``); an exception of
any other type is an engine bug and is reported retryable with its type name, never
swallowed. Where the library's words say the GPU ran out of memory or faulted, a generic
reason becomes ``vram_oom`` or ``device_error``.
"""

from __future__ import annotations

from typing import Final

from protocol.ipc import REASON_BAD_INPUT, REASON_NO_MEMORY

REASON_INVALID_OUTPUT: Final = "invalid_output"


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


class SchemaRefused(EngineError):
    """Raised by the llama engine before it generates, when the task's ``jsonSchema`` is not
    valid JSON Schema or asks for something the grammar cannot express (a remote ``$ref``, a
    lookahead in ``pattern``, bounds no value meets). The input is wrong, not the worker, so
    no other worker would do better: not retryable. The message names the keyword and where
    in the schema it is; the studio's user fixes the schema."""

    retryable = False
    reason = REASON_BAD_INPUT

    def __init__(self, keyword: str, location: str, why: str) -> None:
        super().__init__(f"jsonSchema cannot be enforced: `{keyword}` at {location}: {why}")
        self.keyword = keyword
        self.location = location


class InvalidOutput(EngineError):
    """Raised by the llama engine when an answer does not validate against the task's
    ``jsonSchema`` and neither does the one generated again with another seed (or greedy
    decoding would repeat it). Keywords the grammar does not enforce, or an answer cut
    by ``maxTokens``, get here; another worker runs the same rules, so not retryable. The
    message is the validator's (``7 is greater than the maximum of 5``)."""

    retryable = False
    reason = REASON_INVALID_OUTPUT

    def __init__(self, violation: str) -> None:
        super().__init__(f"output does not satisfy jsonSchema: {violation}")
        self.violation = violation
