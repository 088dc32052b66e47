"""May this worker change its own installation? Facts are read once; the verdict is pure.

Installing is for one layout only: a non-editable install in a virtualenv this user can
write, outside a container. Every other layout belongs to someone else (a git checkout, an
image, the system's package manager, a service sandbox) and gets a report with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Final

from supervisor.updates.versions import PACKAGE

# A container whose virtualenv lives on a volume may update itself after all.
CONTAINER_OK_ENV: Final = "STUDIO_WORKER_UPDATE_IN_CONTAINER"
_CONTAINER_MARKERS: Final = (Path("/.dockerenv"), Path("/run/.containerenv"))
_CONTAINER_CGROUP_WORDS: Final = ("docker", "kubepods", "containerd", "libpod", "lxc")


@dataclass(frozen=True)
class InstallFacts:
    prefix: Path
    in_venv: bool
    editable_at: str | None  # the source tree of an editable install (PEP 610)
    in_container: bool
    container_ok: bool
    writable: bool
    installed: bool  # studio-worker's metadata was found at all


def refusal(facts: InstallFacts) -> str | None:
    """Why this installation is report-only, or None when it may install."""
    if not facts.installed:
        return "studio-worker is not installed as a package here (a bare checkout)"
    if facts.editable_at is not None:
        return f"an editable install of {facts.editable_at}: update that checkout yourself"
    if facts.in_container and not facts.container_ok:
        return (
            f"running in a container: update its image (or set {CONTAINER_OK_ENV}=1 when the "
            "virtualenv lives on a volume)"
        )
    if not facts.in_venv:
        return f"not in a virtualenv (Python at {facts.prefix}): update it with its package manager"
    if not facts.writable:
        return (
            f"the virtualenv {facts.prefix} is not writable by this user (the system "
            "service keeps it read-only): update it as its owner"
        )
    return None


def _editable_at() -> tuple[bool, str | None]:
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        return False, None
    text = dist.read_text("direct_url.json")
    if not text:
        return True, None
    try:
        direct = json.loads(text)
    except ValueError:
        return True, None
    if isinstance(direct, dict) and (direct.get("dir_info") or {}).get("editable"):
        return True, str(direct.get("url", "?")).removeprefix("file://")
    return True, None


def _in_container() -> bool:
    # `container=` is the lowercase variable systemd-nspawn, podman and lxc set.
    marked = os.environ.get("container")  # noqa: SIM112
    if marked or any(p.exists() for p in _CONTAINER_MARKERS):
        return True
    try:
        cgroup = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(word in cgroup for word in _CONTAINER_CGROUP_WORDS)


def _site_packages() -> Path | None:
    try:
        return Path(str(distribution(PACKAGE).locate_file(""))).resolve()
    except PackageNotFoundError:
        return None


def read_facts() -> InstallFacts:
    installed, editable = _editable_at()
    prefix = Path(sys.prefix)
    site = _site_packages()
    bindir = Path(sys.executable).parent
    writable = all(p is not None and os.access(p, os.W_OK) for p in (site, bindir, prefix))
    return InstallFacts(
        prefix=prefix,
        in_venv=sys.prefix != sys.base_prefix,
        editable_at=editable,
        in_container=_in_container(),
        container_ok=os.environ.get(CONTAINER_OK_ENV, "").strip() in ("1", "true", "yes"),
        writable=writable,
        installed=installed,
    )
