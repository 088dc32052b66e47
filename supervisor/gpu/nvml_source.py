"""The real cards, read through NVML (NVIDIA's own bindings, ``nvidia-ml-py``, module
``pynvml``): per device total / used memory, name, UUID and driver, what each process holds
where the driver's pids are ours (``known_processes``), and a poll for XID (critical error)
events that never waits. One NVML session per source: ``nvmlInit`` when it opens,
``nvmlShutdown`` when it closes. Every NVML call may block in the driver, so the governor
calls this from a worker thread, never from the event loop. It reports what NVML says and
decides nothing about it, never imports an inference library, and never fails a supervisor
for lack of NVML (``open_nvml`` answers None).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import psutil

from supervisor.gpu.facts import GpuDevice, GpuReadError, XidEvent

log = logging.getLogger("supervisor.gpu.nvml")

# How many queued XID events one poll takes at most: a card in an error storm must not hold
# the poller; the rest are read at the next poll.
XID_EVENTS_PER_POLL: Final = 64


def known_processes(
    reported: Iterable[tuple[int, int | None]], pid_visible: Callable[[int], bool]
) -> dict[int, int] | None:
    """pid -> bytes for one card from NVML's ``(pid, bytes or None)`` pairs, or None when
    the figures cannot be matched to our processes.

    NVML reports the pids the driver knows. Outside a container those are ours; inside one
    they are the host's, which mean nothing in our pid namespace (absent, or by chance some
    unrelated process). So the map is given only when every reported pid exists here and
    comes with a figure: one pid we cannot see, or one figure NVML cannot give (MIG, Windows
    WDDM), makes the card's whole split unknown, because a numbering that is not ours can
    also collide with our pids. Only a container whose every reported host pid happens to
    exist here too can fool it; the card's totals are never affected.

    A process that is both a compute and a graphics client (Vulkan on some drivers) is listed
    twice with the same figure (its whole use of the card), so the two are not added."""
    found: dict[int, int] = {}
    for pid, used in reported:
        if used is None or not pid_visible(pid):
            return None
        found[pid] = max(used, found.get(pid, 0))
    return found


def _text(value: object) -> str:
    # pynvml returns str for these on Python 3; older releases returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlGpuSource:
    """A ``GpuSourceWithXid`` over an initialised NVML. Made by ``open_nvml``."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._closed = False
        self._event_set: Any = self._register_xid_events()

    @property
    def kind(self) -> str:
        return "nvml"

    @property
    def reports_xid(self) -> bool:
        """Whether at least one card takes XID event registration (for the start-up log)."""
        return self._event_set is not None

    def read(self) -> list[GpuDevice]:
        with self._nvml_errors("read"):
            driver = _text(self._nvml.nvmlSystemGetDriverVersion())
            count = int(self._nvml.nvmlDeviceGetCount())
            return [self._read_device(index, driver) for index in range(count)]

    def _read_device(self, index: int, driver: str) -> GpuDevice:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuDevice(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            total_bytes=int(memory.total),
            used_bytes=int(memory.used),
            driver=driver,
            processes=self._processes(handle),
        )

    def _processes(self, handle: Any) -> dict[int, int] | None:
        nvml = self._nvml
        try:
            running = [
                *nvml.nvmlDeviceGetComputeRunningProcesses(handle),
                *nvml.nvmlDeviceGetGraphicsRunningProcesses(handle),
            ]
        except (nvml.NVMLError, nvml.NVMLLibraryMismatchError):
            # Not supported here (a MIG parent, a driver too old for these calls, no
            # permission): the card's memory is still known, only the split is not.
            return None
        reported = [
            (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory)) for p in running
        ]
        return known_processes(reported, psutil.pid_exists)

    def _register_xid_events(self) -> Any:
        """An event set with every card that takes XID events, or None where none does
        (some boards, vGPU guests, WSL): XIDs are then simply never reported."""
        nvml = self._nvml
        xid = nvml.nvmlEventTypeXidCriticalError
        try:
            event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.info("NVML cannot report XID errors here: %s", exc)
            return None
        registered = 0
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            log.info("NVML cannot report XID errors here: %s", exc)
            count = 0
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                if int(nvml.nvmlDeviceGetSupportedEventTypes(handle)) & xid:
                    nvml.nvmlDeviceRegisterEvents(handle, xid, event_set)
                    registered += 1
            except nvml.NVMLError as exc:
                log.info("gpu %d cannot report XID errors: %s", index, exc)
        if registered:
            return event_set
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlEventSetFree(event_set)
        return None

    def poll_xid_events(self) -> list[XidEvent]:
        if self._event_set is None:
            return []
        nvml = self._nvml
        events: list[XidEvent] = []
        with self._nvml_errors("poll XID events"):
            for _ in range(XID_EVENTS_PER_POLL):
                try:
                    data = nvml.nvmlEventSetWait(self._event_set, 0)
                except nvml.NVMLError_Timeout:
                    break  # nothing queued: timeout 0 is the non-blocking poll
                if int(data.eventType) & nvml.nvmlEventTypeXidCriticalError:
                    index = int(nvml.nvmlDeviceGetIndex(data.device))
                    events.append(XidEvent(index, int(data.eventData)))
        return events

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        nvml = self._nvml
        # Closing runs at shutdown: a failing driver must not stop the rest of it.
        if self._event_set is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()

    @contextlib.contextmanager
    def _nvml_errors(self, what: str) -> Iterator[None]:
        nvml = self._nvml
        try:
            yield
        except (nvml.NVMLError, nvml.NVMLLibraryMismatchError) as exc:
            raise GpuReadError(f"NVML {what} failed: {exc}") from exc


def open_nvml(nvml: Any = None) -> NvmlGpuSource | None:
    """An NVML session over every card, or None where NVML cannot say anything: the
    bindings do not import, ``nvmlInit`` fails (no library, no driver loaded, no
    permission) or it finds no card (a machine with the library but no NVIDIA GPU).
    ``nvml`` is the ``pynvml`` module; tests pass a stand-in for the driver."""
    if nvml is None:
        nvml = _import_pynvml()
        if nvml is None:
            return None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("no NVML: %s", exc)
        return None
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        log.info("no NVML: counting devices failed: %s", exc)
        count = 0
    if count == 0:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
        return None
    return NvmlGpuSource(nvml)


def _import_pynvml() -> Any:
    try:
        import pynvml
    except Exception as exc:
        # Any failure here, not only ImportError: a broken install must read as "no NVML",
        # never stop a worker that may not need a GPU at all.
        log.info("no NVML: pynvml does not import (%s)", exc)
        return None
    return pynvml
