"""Which config a command uses with ``--local``: ``start --local`` and ``status``, ``pause``
and ``resume --local`` reach the same one.

``--local`` without ``--config`` means the local worker's own config beside the default
one (``owned_studio.ownership.local_config_path``), so the operator's real registration is
never touched; an explicit ``--config`` wins. Starting, keeping and stopping the studio
itself is the runtime's (``supervisor/owned_studio/``), which holds the supervisor's lock
first.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.owned_studio.ownership import local_config_path

__all__ = ["command_config_path", "local_config_path"]


def command_config_path(config_path: Path, *, explicit_config: bool, local: bool) -> Path:
    """The config of a command given ``--local`` or not (``--config`` given or not)."""
    if local and not explicit_config:
        return local_config_path()
    return config_path
