"""A studio started by ``supervisor start --local`` never outlives that supervisor.

Linux sends the studio SIGTERM when its parent dies, ``kill -9`` included
(``PR_SET_PDEATHSIG``), which it handles like an operator's SIGTERM: it stops serving and
closes its database. As a second line (other systems, a signal lost while the studio was
stopped), ``wait_for_parent_exit`` notices that ``getppid()`` changed. The engine hosts do
the same with SIGKILL (``engines/parent_watch.py``); the studio asks for SIGTERM because it
has a database to close and no native code that could ignore it. Nothing else here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

import anyio

PR_SET_PDEATHSIG: Final = 1
PARENT_POLL_S: Final = 1.0


def exit_with_parent(parent_pid: int) -> bool:
    """Ask for SIGTERM when the parent dies; False when it has died already (the studio
    should not start at all then)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the getppid() watch still ends the studio, within PARENT_POLL_S
    # Checked after prctl: a parent that died before it took effect sent no signal.
    return os.getppid() == parent_pid


async def wait_for_parent_exit(parent_pid: int, interval_s: float = PARENT_POLL_S) -> None:
    """Return once the process that started this one is gone (this one was re-parented)."""
    # Polled: nothing announces a re-parenting (PR_SET_PDEATHSIG is the event, when it works).
    while True:
        await anyio.sleep(interval_s)
        if os.getppid() != parent_pid:
            return
