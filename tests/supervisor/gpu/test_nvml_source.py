"""The NVML source without a GPU: a stand-in for the driver (the ``pynvml`` functions the
source calls, raising pynvml's own error classes) drives every path that needs a card; the
pid rule runs against real pids. What a real card says is in ``test_nvml_on_a_gpu.py``."""

# The stand-in keeps pynvml's own (camelCase) names, which is what the source calls.
# ruff: noqa: N802, N815

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from supervisor.gpu.facts import GpuReadError, XidEvent
from supervisor.gpu.nvml_source import NvmlGpuSource, known_processes, open_nvml

XID = pynvml.nvmlEventTypeXidCriticalError
OURS = os.getpid()
# A pid above the kernel's limit never exists: a host pid seen from inside a container.
NOT_OURS = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeCard:
    name: str
    uuid: str
    total: int
    used: int
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    memory_error: int | None = None
    process_error: int | None = None
    events: int = XID  # the event types it supports


class FakeNvml:
    """The part of ``pynvml`` the source uses; a handle is the card's index."""

    NVMLError = pynvml.NVMLError
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    nvmlEventTypeXidCriticalError = XID

    def __init__(self, *cards: FakeCard, init_error: int | None = None) -> None:
        self.cards = list(cards)
        self.init_error = init_error
        self.wait_error: int | None = None
        self.inits = self.shutdowns = 0
        self.registered: list[int] = []
        self.queued: list[SimpleNamespace] = []
        self.freed: list[str] = []

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise nvml_error(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.82.07"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.cards[handle].name

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return self.cards[handle].uuid.encode()  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        card = self.cards[handle]
        if card.memory_error is not None:
            raise nvml_error(card.memory_error)
        return SimpleNamespace(total=card.total, used=card.used, free=card.total - card.used)

    def _procs(self, card: FakeCard, listed: list[tuple[int, int | None]]) -> list[object]:
        if card.process_error is not None:
            raise nvml_error(card.process_error)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in listed]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[object]:
        return self._procs(self.cards[handle], self.cards[handle].compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[object]:
        return self._procs(self.cards[handle], self.cards[handle].graphics)

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, handle: int) -> int:
        return self.cards[handle].events

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, event_set: str) -> None:
        assert types == XID and event_set == "event-set"
        self.registered.append(handle)

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> SimpleNamespace:
        assert timeout_ms == 0, "a poll must never wait"
        if self.wait_error is not None:
            raise nvml_error(self.wait_error)
        if not self.queued:
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        return self.queued.pop(0)

    def nvmlEventSetFree(self, event_set: str) -> None:
        self.freed.append(event_set)

    def queue_xid(self, index: int, xid: int) -> None:
        self.queued.append(SimpleNamespace(device=index, eventType=XID, eventData=xid))


def h200(**overrides: object) -> FakeCard:
    card = FakeCard("NVIDIA H200", "GPU-5a1c2d3e-0000-1111-2222-333344445555", 150 * 2**30, 2**30)
    for key, value in overrides.items():
        setattr(card, key, value)
    return card


# --- which processes are ours -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ([], {}),
        ([(OURS, 100)], {OURS: 100}),
        ([(OURS, 100), (1, 5)], {OURS: 100, 1: 5}),  # pid 1 exists in every namespace
        ([(OURS, 100), (OURS, 100)], {OURS: 100}),  # compute and graphics: one process
        ([(OURS, 100), (NOT_OURS, 5)], None),  # one host pid: the numbering is not ours
        ([(NOT_OURS, 5)], None),
        ([(OURS, None)], None),  # NVML has no figure (MIG, WDDM)
    ],
)
def test_known_processes(
    reported: list[tuple[int, int | None]], expected: dict[int, int] | None
) -> None:
    assert known_processes(reported, lambda pid: Path(f"/proc/{pid}").exists()) == expected


# --- opening ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_no_source_when_nvml_does_not_initialise(code: int) -> None:
    assert open_nvml(FakeNvml(h200(), init_error=code)) is None


def test_no_source_when_nvml_sees_no_card() -> None:
    nvml = FakeNvml()
    assert open_nvml(nvml) is None
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_no_source_when_the_bindings_do_not_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert open_nvml() is None


# --- reading ------------------------------------------------------------------------------------


def test_read_reports_every_card() -> None:
    second = FakeCard("NVIDIA L4", "GPU-0b0b0b0b-0000-1111-2222-333344445555", 24 * 2**30, 0)
    source = open_nvml(FakeNvml(h200(compute=[(OURS, 2**30)]), second))
    assert source is not None
    first, other = source.read()
    assert source.kind == "nvml"
    assert (first.index, first.name, first.uuid) == (
        0,
        "NVIDIA H200",
        "GPU-5a1c2d3e-0000-1111-2222-333344445555",
    )
    assert (first.total_bytes, first.used_bytes, first.driver) == (150 * 2**30, 2**30, "580.82.07")
    assert first.processes == {OURS: 2**30}
    assert (other.index, other.name, other.processes) == (1, "NVIDIA L4", {})
    source.close()


def test_host_pids_make_the_split_unknown_not_the_card() -> None:
    source = open_nvml(FakeNvml(h200(compute=[(OURS, 10)], graphics=[(NOT_OURS, 20)])))
    assert source is not None
    (card,) = source.read()
    assert card.processes is None
    assert card.used_bytes == 2**30
    source.close()


def test_process_listing_not_supported_is_an_unknown_split() -> None:
    source = open_nvml(FakeNvml(h200(process_error=pynvml.NVML_ERROR_NOT_SUPPORTED)))
    assert source is not None
    (card,) = source.read()
    assert card.processes is None
    source.close()


def test_an_nvml_failure_is_a_read_error_with_its_message() -> None:
    nvml = FakeNvml(h200())
    source = open_nvml(nvml)
    assert source is not None
    nvml.cards[0].memory_error = pynvml.NVML_ERROR_GPU_IS_LOST
    with pytest.raises(GpuReadError, match="NVML read failed: GPU is lost"):
        source.read()
    source.close()


# --- XID events ---------------------------------------------------------------------------------


def test_xid_events_are_polled_without_waiting() -> None:
    nvml = FakeNvml(h200(), h200(uuid="GPU-other"))
    source = open_nvml(nvml)
    assert source is not None
    assert source.reports_xid
    assert nvml.registered == [0, 1]
    assert source.poll_xid_events() == []
    nvml.queue_xid(1, 79)
    nvml.queue_xid(0, 48)
    assert source.poll_xid_events() == [XidEvent(1, 79), XidEvent(0, 48)]
    assert source.poll_xid_events() == []
    source.close()


def test_a_poll_takes_a_bounded_number_of_events() -> None:
    nvml = FakeNvml(h200())
    source = open_nvml(nvml)
    assert source is not None
    for _ in range(70):
        nvml.queue_xid(0, 13)
    assert len(source.poll_xid_events()) == 64
    assert len(source.poll_xid_events()) == 6
    source.close()


def test_cards_without_xid_events_report_none() -> None:
    nvml = FakeNvml(h200(events=0))
    source = open_nvml(nvml)
    assert source is not None
    assert not source.reports_xid
    assert nvml.freed == ["event-set"]  # nothing registered: the set is not kept
    nvml.queue_xid(0, 79)
    assert source.poll_xid_events() == []
    source.close()


def test_a_failing_event_wait_is_a_read_error() -> None:
    nvml = FakeNvml(h200())
    source = open_nvml(nvml)
    assert source is not None
    nvml.wait_error = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(GpuReadError, match="NVML poll XID events failed: Unknown Error"):
        source.poll_xid_events()
    source.close()


def test_close_frees_and_shuts_down_once() -> None:
    nvml = FakeNvml(h200())
    source = open_nvml(nvml)
    assert isinstance(source, NvmlGpuSource)
    source.close()
    source.close()
    assert nvml.freed == ["event-set"]
    assert (nvml.inits, nvml.shutdowns) == (1, 1)
