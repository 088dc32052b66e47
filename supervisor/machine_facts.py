"""Facts about this machine for the capabilities (§5): its name and the OS user. (The VRAM
it advertises comes from the GPU governor, which reads every card: ``GpuGovernor.total_gb``.)
"""

from __future__ import annotations

import getpass
import logging
import socket

log = logging.getLogger("supervisor.machine")


def machine_name() -> str:
    try:
        return socket.gethostname() or "unknown-host"
    except OSError:
        return "unknown-host"


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        log.warning("could not determine the OS user; reporting unknown-user")
        return "unknown-user"
