"""What a job handed to the pool ends as: a result or a failure with its retry rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq


@dataclass(frozen=True)
class JobSucceeded:
    elapsed_ms: int
    json: Any = None
    ext: str | None = None
    payload: zmq.Frame | None = None

    @property
    def is_binary(self) -> bool:
        return self.payload is not None

    def payload_view(self) -> memoryview:
        """The result bytes without a copy (the frame owns them)."""
        assert self.payload is not None
        return self.payload.buffer


@dataclass(frozen=True)
class JobFailedOutcome:
    error: str
    retryable: bool
    reason: str


JobOutcome = JobSucceeded | JobFailedOutcome
