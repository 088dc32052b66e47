"""The interface every backend implements, and the job context the host hands it.

A backend is constructed once per host process and keeps its model warm between jobs. It
runs one job at a time on the host's job thread; it reports progress through
``JobContext.progress`` (the supervisor's liveness signal for long jobs) and must not
write protocol to stdout/stderr, which are log streams.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from protocol.ipc import ComputeDevice, LogLevelName, ProgressPhase
from protocol.tasks import ModelSource, Task, TaskKindName


@dataclass(frozen=True)
class BinaryResult:
    """Image / audio / video bytes, uploaded by the supervisor as multipart."""

    data: bytes
    ext: str


@dataclass(frozen=True)
class JsonResult:
    """LLM / STT output, sent to the studio as ``completeJson``."""

    value: Any


EngineResult = BinaryResult | JsonResult

ProgressFn = Callable[[ProgressPhase, int, int, str], None]
LogFn = Callable[[LogLevelName, str], None]


def _no_progress(phase: ProgressPhase, step: int, total: int, message: str) -> None:
    del phase, step, total, message


def _no_log(level: LogLevelName, message: str) -> None:
    del level, message


@dataclass
class JobContext:
    """Everything a backend needs for one job; callbacks are safe to call from any thread."""

    job_id: str
    model: str
    task: Task
    model_source: ModelSource
    models_root: Path
    progress: ProgressFn = _no_progress
    log: LogFn = _no_log
    cancelled: threading.Event = field(default_factory=threading.Event)


class Engine(abc.ABC):
    """One backend. ``name`` is the CLI name (``synthetic``, ``sdcpp``, ``llama``)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.model_loads = 0

    @abc.abstractmethod
    def advertised_models(self) -> dict[TaskKindName, list[str]]:
        """Model ids per task kind for the capabilities (never the bare wildcard ``*``)."""

    @abc.abstractmethod
    def library_versions(self) -> dict[str, str]:
        """Versions of the inference libraries this backend loaded, for ``Ready``."""

    @abc.abstractmethod
    def run(self, ctx: JobContext) -> EngineResult:
        """Run one job; raise ``engines.errors.EngineError`` (or a subclass) on failure."""

    def compute_device(self) -> ComputeDevice:
        """Where this engine computes, for ``Ready`` (a GPU slot's host on the CPU is
        refused by the supervisor). Backends that can use a GPU report what they found."""
        return ComputeDevice("cpu")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free nothing
        """Free the loaded model before the host exits."""
