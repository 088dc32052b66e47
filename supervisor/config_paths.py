"""Where config.toml and the models live by default: the Rust worker's paths (the
``directories`` crate's config dir), and ``~`` expanded the way it does."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Final

APP_DIR_NAME: Final = "minis-studio-worker"
CONFIG_FILE_NAME: Final = "config.toml"


def _home_dir() -> Path | None:
    try:
        return Path.home()
    except RuntimeError:
        return None


def default_models_root() -> Path:
    """``~/models``, or ``$TMPDIR/studio-worker-models`` when there is no home directory."""
    home = _home_dir()
    if home is None:
        return Path(tempfile.gettempdir()) / "studio-worker-models"
    return home / "models"


def expand_home(value: str) -> str:
    """Expand a leading ``~`` or ``~/`` (nothing else, e.g. not ``~user``); kept if no home."""
    home = _home_dir()
    if home is None:
        return value
    if value == "~":
        return str(home)
    if value.startswith("~/"):
        return str(home / value[2:])
    return value


def default_config_path() -> Path:
    """Where the Rust worker keeps config.toml (the ``directories`` crate's config dir).

    Linux: ``$XDG_CONFIG_HOME/minis-studio-worker/config.toml`` (an absolute
    ``XDG_CONFIG_HOME`` only), else ``~/.config/minis-studio-worker/config.toml``.
    """
    home = _home_dir() or Path(tempfile.gettempdir())
    if sys.platform == "darwin":
        base = home / "Library" / "Application Support" / f"gg.minis.{APP_DIR_NAME}"
    elif sys.platform == "win32":
        appdata = os.environ.get("APPDATA")
        root = Path(appdata) if appdata else home / "AppData" / "Roaming"
        base = root / "minis" / APP_DIR_NAME / "config"
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME", "")
        root = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".config"
        base = root / APP_DIR_NAME
    return base / CONFIG_FILE_NAME
