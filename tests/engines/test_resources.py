"""The host's own resource readings: its RSS, and no VRAM (the supervisor reads that through
NVML, so a host never runs a tool or opens the driver for it)."""

from __future__ import annotations

import psutil

from engines.resources import ResourceProbe


def test_rss_is_this_process_and_vram_is_left_to_the_supervisor() -> None:
    probe = ResourceProbe()
    rss = probe.rss_bytes()
    assert 0 < rss <= psutil.virtual_memory().total
    assert probe.vram_bytes() is None
    assert probe.vram_bytes(max_age_s=0) is None
