"""Make sure a host never outlives its supervisor, even one killed with SIGKILL.

Linux delivers SIGKILL to the host when the parent dies (``PR_SET_PDEATHSIG``); on other
systems, and as a second line, the host's I/O loop compares ``getppid()`` with the pid it
was started under on every tick.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

PR_SET_PDEATHSIG: Final = 1


def die_with_parent(expected_parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # The parent may have died before prctl took effect.
    if not parent_alive(expected_parent):
        os._exit(0)


def parent_alive(expected_parent: int) -> bool:
    return os.getppid() == expected_parent
