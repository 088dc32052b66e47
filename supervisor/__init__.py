"""The supervisor: one process that talks to the studio and runs the engine hosts.

It owns the config file, registration, the studio session and the engine slots; it never
imports an inference library (``engines.catalog`` is the only engine module it loads).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final


def _installed_version() -> str:
    try:
        return version("studio-worker")
    except PackageNotFoundError:  # a bare checkout that was never installed
        return "0.0.0+unknown"


__version__: Final = _installed_version()

USER_AGENT: Final = f"studio-worker/{__version__}"
