"""The host's small parts without a process: the warm-model LRU, the load gate between the
I/O and job threads, and the reason a failure is reported with."""

from __future__ import annotations

import threading

import pytest

from engines.errors import EngineError, LoadRefused, ProvisionError, UnsupportedTask
from engines.job_failure import REASON_ENGINE_BUG, job_failed
from engines.load_gate import LoadGate
from engines.warm_models import WarmModels
from protocol import ipc
from protocol.ipc import ResidentModel

JOIN_S = 30.0
CUDA_OOM = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 14336.00 MiB on device 0: "
    "cudaMalloc failed: out of memory"
)

# --- WarmModels ----------------------------------------------------------------------------


def test_warm_models_evict_the_least_recently_used() -> None:
    freed: list[tuple[str, str]] = []
    warm: WarmModels[str] = WarmModels(lambda key, model: freed.append((key, model)))
    warm.add("a", "model-a", 10)
    assert warm.make_room(2) == []
    warm.add("b", "model-b", 20)
    assert warm.use("a") == "model-a"  # a is now the most recently used
    assert warm.resident() == [ResidentModel("b", 20), ResidentModel("a", 10)]
    assert warm.make_room(2) == ["b"]
    assert freed == [("b", "model-b")]
    warm.add("c", "model-c", 30)
    assert warm.make_room(1) == ["a", "c"]
    assert len(warm) == 0
    assert warm.make_room(0) == []  # a limit below one still leaves room for one


def test_warm_models_discard_and_clear_free_each_model_once() -> None:
    freed: list[str] = []
    warm: WarmModels[int] = WarmModels(lambda key, model: freed.append(key))
    warm.add("a", 1, 1)
    warm.add("b", 2, 2)
    assert warm.peek("a") == 1
    assert warm.resident()[-1].load_key == "b", "peek does not reorder"
    assert warm.discard("a") is True
    assert warm.discard("a") is False
    assert "a" not in warm and "b" in warm
    warm.clear()
    assert freed == ["a", "b"]
    assert warm.resident() == []


def test_a_free_that_raises_still_removes_the_model() -> None:
    def explode(key: str, model: int) -> None:
        raise RuntimeError(f"cannot free {key}")

    warm: WarmModels[int] = WarmModels(explode)
    warm.add("a", 1, 1)
    with pytest.raises(RuntimeError):
        warm.discard("a")
    assert warm.resident() == []


# --- LoadGate ------------------------------------------------------------------------------


def _wait_in_thread(
    gate: LoadGate, cancelled: threading.Event
) -> tuple[threading.Thread, list[ipc.LoadGrant | None]]:
    got: list[ipc.LoadGrant | None] = []
    waiter = threading.Thread(target=lambda: got.append(gate.wait(cancelled)))
    waiter.start()
    return waiter, got


def test_a_grant_reaches_the_waiting_job_and_others_are_refused() -> None:
    gate, cancelled = LoadGate(), threading.Event()
    assert not gate.offer(ipc.LoadGrant("job-1", True)), "nobody waits yet"
    gate.expect("job-1")
    waiter, got = _wait_in_thread(gate, cancelled)
    assert not gate.offer(ipc.LoadGrant("job-0", True)), "a grant for another job"
    assert gate.offer(ipc.LoadGrant("job-1", False, "does not fit"))
    waiter.join(JOIN_S)
    assert got == [ipc.LoadGrant("job-1", False, "does not fit")]
    assert not gate.offer(ipc.LoadGrant("job-1", True)), "the wait is over"


def test_a_grant_that_arrives_before_the_wait_is_kept() -> None:
    gate = LoadGate()
    gate.expect("job-1")
    assert gate.offer(ipc.LoadGrant("job-1", True))
    assert not gate.offer(ipc.LoadGrant("job-1", True)), "one answer per request"
    assert gate.wait(threading.Event()) == ipc.LoadGrant("job-1", True)


def test_a_cancel_ends_the_wait() -> None:
    gate, cancelled = LoadGate(), threading.Event()
    gate.expect("job-1")
    waiter, got = _wait_in_thread(gate, cancelled)
    cancelled.set()
    gate.wake()
    waiter.join(JOIN_S)
    assert not waiter.is_alive()
    assert got == [None]
    # Cancelled before the wait began: it returns at once.
    gate.expect("job-2")
    assert gate.wait(cancelled) is None


# --- job_failed ----------------------------------------------------------------------------


def test_gpu_words_turn_generic_failures_into_gpu_reasons() -> None:
    oom = job_failed("j", EngineError(f"llama.cpp could not load m.gguf: {CUDA_OOM}"))
    assert (oom.reason, oom.retryable) == (ipc.REASON_VRAM_OOM, True)
    fault = job_failed("j", RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert (fault.reason, fault.retryable) == (ipc.REASON_DEVICE_ERROR, True)
    assert fault.error.startswith("RuntimeError: CUDA error")


def test_other_failures_keep_their_reasons() -> None:
    assert job_failed("j", EngineError("cancelled")).reason == ipc.REASON_ENGINE_ERROR
    bug = job_failed("j", KeyError("x"))
    assert (bug.reason, bug.retryable, bug.error) == (REASON_ENGINE_BUG, True, "KeyError: 'x'")
    host_oom = job_failed("j", MemoryError("numpy"))
    assert host_oom.reason == REASON_ENGINE_BUG, "host memory is no GPU reason"
    unsupported = job_failed("j", UnsupportedTask("llama", "image"))
    assert (unsupported.reason, unsupported.retryable) == (ipc.REASON_UNSUPPORTED, False)
    # A specific reason stands even when the text mentions GPU memory.
    refused = job_failed("j", LoadRefused(f"the supervisor refused: {CUDA_OOM}"))
    assert (refused.reason, refused.retryable) == (ipc.REASON_NO_MEMORY, True)
    assert job_failed("j", ProvisionError(CUDA_OOM)).reason == "provision"
