"""The supervisor: one process that talks to the studio and runs the engine hosts.

It owns the config file, registration, the studio session and the engine slots. The rule:
it never imports an inference library (llama_cpp, stable_diffusion_cpp, nor an engine
module that imports one), so a crash or a leak in a backend can only end its host process.
Pure modules of ``engines`` that describe engines and their hosts are fine and are used
(``engines.catalog``, ``engines.cpu_threads``, ``engines.progress_bar`` and the like).
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
