"""The interface every backend implements, and the job context the host hands it.

A backend is constructed once per host process and keeps up to ``max_warm_models`` models
warm between jobs, each under the job's load key (``engines.load_keys``), evicting the least
recently used before a load that would exceed it. It runs one job at a time on the host's job
thread (jobs, unloads and probes alike, so none of them ever overlap); it reports progress
through ``JobContext.progress`` (the supervisor's liveness signal for long jobs), calls
``JobContext.before_load`` right before every load so the supervisor can keep GPU memory
apart, and must not write protocol to stdout/stderr, which are log streams.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engines.load_keys import load_key as compute_load_key
from protocol.ipc import ComputeDevice, LogLevelName, ProgressPhase, ResidentModel
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


def load_at_once(estimate_bytes: int) -> None:
    """``before_load`` of a host that does not ask the supervisor: every load may go ahead."""
    del estimate_bytes


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
    # The key the loaded model is kept under; the host fills it, "" means "compute it".
    load_key: str = ""
    # Called right before loading a model that is not resident, with the engine's own size
    # estimate in bytes (0: none). Blocks until the load may go ahead; raises ``LoadRefused``
    # when the supervisor refuses it, ``EngineError("cancelled")`` when the job is cancelled
    # while it waits.
    before_load: Callable[[int], None] = load_at_once
    # The studio's estimate of the job's GPU memory (``RunJob.vram_estimate_bytes``); 0: none.
    vram_estimate_bytes: int = 0

    def key_for(self, engine: str) -> str:
        """The load key of this job on ``engine``: the host's, or computed from the claim."""
        return self.load_key or compute_load_key(engine, self.model, self.model_source, self.task)


class Engine(abc.ABC):
    """One backend. ``name`` is the CLI name (``synthetic``, ``sdcpp``, ``llama``)."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.model_loads = 0
        # How many models to keep loaded at once (the host's ``--max-warm-models``).
        self.max_warm_models = 1

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

    def resident(self) -> list[ResidentModel]:
        """The models kept loaded now, by load key, least recently used first."""
        return []

    def unload(self, load_key: str) -> bool:
        """Free the model kept under ``load_key``; False when none is. Between jobs only."""
        del load_key
        return False

    def probe_device(self, nbytes: int) -> str:
        """Initialise the compute backend on the host's device, allocate and free ``nbytes``
        and say what was done; raise ``EngineError`` when the device fails. A backend on the
        CPU has nothing to prove."""
        del nbytes
        return "cpu: nothing to probe"

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free nothing
        """Free the loaded models before the host exits."""
