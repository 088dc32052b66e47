"""Saving ``vram_threshold_gb``: one function for ``supervisor set-threshold`` and the status
page, so both write the same keys and answer with the same text.

The running supervisor re-reads the value for every heartbeat, so saving it is enough. It
checks the number, not the lane: the caller knows which lanes there are (the command line
asks the supervisor, the status page is inside it).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from supervisor.config import load_config, save_config
from supervisor.errors import UsageError
from supervisor.lane_identity import with_identity

log = logging.getLogger("supervisor.commands")


def check_threshold(gb: float) -> None:
    """Raises UsageError for a threshold no worker can have."""
    if not math.isfinite(gb) or gb < 0:
        raise UsageError("threshold must be >= 0")


def display_float(value: float) -> str:
    """Rust's ``{}`` for f64: ``33`` for 33.0, ``12.5`` for 12.5."""
    return str(int(value)) if value.is_integer() else repr(value)


def save_threshold(cfg_path: Path, gb: float, lane: str | None = None) -> str:
    """Save ``gb`` for every lane (the top-level key; lanes' own values go), or with
    ``lane`` in its ``[lane.NAME]`` table; returns what the CLI prints."""
    check_threshold(gb)
    loaded = load_config(cfg_path)
    if lane is None:
        tables = {n: t.without_threshold() for n, t in loaded.lane.items()}
        cfg = loaded.replace(
            vram_threshold_gb=gb, lane={n: t for n, t in tables.items() if t is not None}
        )
    else:
        cfg = with_identity(loaded, lane, {"vram_threshold_gb": gb})
    # Only these keys are written: the rest of the operator's file stays as it is.
    save_config(cfg_path, cfg, previous=loaded)
    log.info('vram threshold set op="set_threshold" vram_threshold_gb=%s lane=%s', gb, lane or "*")
    prefix = f"[lane.{lane}] " if lane else ""
    return f"{prefix}vram_threshold_gb = {display_float(gb)}"
