"""What ``llama_warm.py`` and ``sdcpp_warm.py`` share: page-cache eviction and the floor row."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages of an unmapped file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Floor:
    """One process calling the library on a cached file: load, first job, second job
    (seconds). No worker's second / first ratio with a cached file can beat this one on the
    same machine."""

    load_s: float
    first_s: float
    second_s: float

    def report(self) -> None:
        ms = 1000.0
        job1, job2 = (self.load_s + self.first_s) * ms, self.second_s * ms
        name = "floor: the library alone, one process, cached"
        print(f"  {name:50} {job1:9.1f} {job2:9.1f} {job1 - job2:7.1f} {job2 / job1:6.3f}")
