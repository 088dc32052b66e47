"""A one-line download progress bar for a person watching a terminal.

Usable directly as ``ensure_file``'s ``on_progress(done, total)`` and, through
``file_progress``, as ``ensure_model_files``' ``on_progress(name, done, total)``. It draws
on stderr (or the given stream) only when that is a TTY: engine hosts under the supervisor
have their stderr piped into the log stream, where a ``\\r`` bar would be noise, so there
it stays silent.
"""

from __future__ import annotations

import sys
from typing import Final, TextIO

BAR_WIDTH: Final = 28
_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class TerminalProgress:
    """Redraws ``label [####----]  42%  1.2 GiB / 2.8 GiB`` in place; ends the line at 100 %."""

    def __init__(
        self, label: str = "", *, stream: TextIO | None = None, unit: str = "bytes"
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self._stream)
        self._label = label
        self._line_open = False
        self.unit = unit  # "bytes", or a word for counted things ("steps", "tokens")

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        self._stream.write("\r" + render_line(self._label, done, total, self.unit) + "\x1b[K")
        self._line_open = True
        if total > 0 and done >= total:
            self.close()
        else:
            self._stream.flush()

    def file_progress(self, name: str, done: int, total: int) -> None:
        """``ensure_model_files``' callback: one line per file name."""
        if name != self._label:
            self.close()
            self._label = name
        self(done, total)

    def close(self) -> None:
        """End the current line, if one is drawn (safe to call any number of times)."""
        if self._line_open:
            self._stream.write("\n")
            self._stream.flush()
            self._line_open = False


def render_line(label: str, done: int, total: int, unit: str = "bytes") -> str:
    prefix = f"{label} " if label else ""

    def amount(n: int) -> str:
        return format_bytes(n) if unit == "bytes" else str(n)

    suffix = "" if unit == "bytes" else f" {unit}"
    if total <= 0:
        return f"{prefix}{amount(done)}{suffix}"
    fraction = min(done / total, 1.0)
    filled = int(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return f"{prefix}[{bar}] {fraction * 100:3.0f}%  {amount(done)} / {amount(total)}{suffix}"


def _is_tty(stream: TextIO | None) -> bool:
    if stream is None:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
