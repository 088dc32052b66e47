"""What a load and a job really took on a GPU, from readings taken around them: pure.

A job's memory is measured from NVML's figure for its host's process where the driver's
PIDs are ours, and otherwise from the card's used memory, which only says something about
one job when nothing else moved on that card meanwhile: no other job ran there, and nothing
was unloaded or loaded for anyone else (each such change bumps the card's epoch). The
resident size of a model loaded during the job is read at the job's end, when its working
buffers are gone; the transient peak is the highest reading during the job above that.
The governor feeds readings in and records what comes out in the ledger.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class _LoadStart:
    device_before: int
    process_before: int | None
    dropped_bytes: int  # what the host unloaded of its own for this load


@dataclass
class JobRecord:
    load_key: str
    device: int
    epoch: int
    alone: bool
    load: _LoadStart | None = None
    peak_process: int = 0
    peak_device: int = 0


@dataclass(frozen=True)
class Measured:
    load_key: str
    size_bytes: int | None  # the model loaded during the job, resident; None: unmeasured
    transient_bytes: int | None  # the most the job held above its model; None: unmeasured


class LoadMeter:
    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._epochs: Counter[int] = Counter()

    def disturb(self, device: int) -> None:
        """Memory on ``device`` moved for a reason no running job caused (an unload)."""
        self._epochs[device] += 1

    def job_started(self, slot_id: str, device: int, load_key: str) -> None:
        others = [j for j in self._jobs.values() if j.device == device]
        for job in others:
            job.alone = False
        self._jobs[slot_id] = JobRecord(load_key, device, self._epochs[device], alone=not others)

    def load_granted(
        self, slot_id: str, device_used: int, process_used: int | None, dropped_bytes: int
    ) -> None:
        """The job's model is about to load; readings from just before (after any
        unloads it waited for)."""
        job = self._jobs.get(slot_id)
        if job is not None:
            job.epoch = self._epochs[job.device]
            job.load = _LoadStart(device_used, process_used, dropped_bytes)

    def sampled(self, slot_id: str, device_used: int, process_used: int | None) -> None:
        job = self._jobs.get(slot_id)
        if job is not None:
            job.peak_device = max(job.peak_device, device_used)
            if process_used is not None:
                job.peak_process = max(job.peak_process, process_used)

    def finish(self, slot_id: str) -> JobRecord | None:
        """The job on ``slot_id`` ended: its record, to ``measure`` with the next reading
        (taken out now, so the slot's next job starts a record of its own)."""
        return self._jobs.pop(slot_id, None)

    def epoch(self, device: int) -> int:
        return self._epochs[device]

    def forget(self, slot_id: str) -> None:
        self._jobs.pop(slot_id, None)


def measure(
    job: JobRecord, meter: LoadMeter, device_used: int, process_used: int | None
) -> Measured:
    """What the job took, from readings taken right after it ended: the size of a model it
    loaded and its working peak, each None where the readings cannot say."""
    load = job.load
    if process_used is not None and (load is None or load.process_before is not None):
        size = (
            None
            if load is None or load.process_before is None
            else process_used - load.process_before + load.dropped_bytes
        )
        transient = max(0, job.peak_process - process_used) if job.peak_process else None
        return Measured(job.load_key, _positive(size), transient)
    if not job.alone or job.epoch != meter.epoch(job.device):
        return Measured(job.load_key, None, None)
    size = None if load is None else device_used - load.device_before + load.dropped_bytes
    transient = max(0, job.peak_device - device_used) if job.peak_device else None
    return Measured(job.load_key, _positive(size), transient)


def _positive(size: int | None) -> int | None:
    return size if size is not None and size > 0 else None
