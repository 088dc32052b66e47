"""``supervisor check-update``: ask the package index now, print the installed and the newest
release, and what the running worker would do about it. Exit 0 whether or not a newer one
exists; an UpdateError (the check itself failed) is one ``error:`` line and exit 1."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from supervisor import __version__
from supervisor.config import load_config
from supervisor.updates.index import newest_release
from supervisor.updates.versions import PACKAGE, is_newer
from supervisor.updates.watch import judge


def check_update(config_path: Path) -> str:
    cfg = load_config(config_path)
    release = newest_release(sys.executable, prerelease=cfg.auto_update_prerelease)
    newer = is_newer(release.version, __version__, prerelease=cfg.auto_update_prerelease)
    try:
        installed_requires = requires(PACKAGE) or []
    except PackageNotFoundError:
        installed_requires = []
    verdict = judge(release, cfg, config_path, installed_requires)
    if not newer:
        state = "up to date"
    elif verdict.install and cfg.auto_update_enabled:
        state = "newer: a running worker installs it at its next check (self_install = true)"
    elif verdict.install:
        state = "newer; not installed: auto_update_enabled = false turns the checks off"
    else:
        state = f"newer; {verdict.note}"
    checking = (
        f"every {cfg.auto_update_interval_secs} s"
        if cfg.auto_update_enabled
        else "off (auto_update_enabled = false)"
    )
    return "\n".join(
        [
            f"installed: {PACKAGE} {__version__}",
            f"newest:    {PACKAGE} {release.version} ({state})",
            f"checks:    {checking}",
        ]
    )
