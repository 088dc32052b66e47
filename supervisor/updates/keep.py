"""The running release, kept as a wheel before an update replaces it: rebuilt from the
installed files themselves (their RECORD), so a rollback needs neither the index nor the
network, and puts back exactly what ran."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib.metadata import distribution
from pathlib import Path, PurePosixPath
from typing import Final

from supervisor.errors import UpdateError
from supervisor.updates.versions import PACKAGE

# Written by the installer, not part of the wheel (pip writes them again on install).
_INSTALLER_FILES: Final = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _wheel_tag(wheel_text: str | None) -> str:
    for line in (wheel_text or "").splitlines():
        if line.startswith("Tag:"):
            return line.split(":", 1)[1].strip()
    return "py3-none-any"


def keep_installed_wheel(dest: Path) -> Path:
    """Write the installed release as ``dest/<name>-<version>-<tag>.whl``; returns it."""
    try:
        return _keep(dest)
    except OSError as exc:
        raise UpdateError(f"cannot keep the running release for a rollback: {exc}") from exc


def _keep(dest: Path) -> Path:
    dist = distribution(PACKAGE)
    if not dist.files:
        raise UpdateError("cannot keep the running release: its RECORD lists no files")
    version = dist.version
    name = PACKAGE.replace("-", "_")
    dist_info = f"{name}-{version}.dist-info"
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}-{version}-{_wheel_tag(dist.read_text('WHEEL'))}.whl"
    partial = target.with_suffix(".partial")
    rows: list[str] = []
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as whl:
        for entry in dist.files or ():
            rel = PurePosixPath(str(entry))
            if rel.parts[0] == ".." or rel.suffix == ".pyc" or "__pycache__" in rel.parts:
                continue  # console scripts (pip makes them again) and bytecode
            if rel.parts[0].endswith(".dist-info") and rel.name in _INSTALLER_FILES:
                continue
            data = Path(str(dist.locate_file(entry))).read_bytes()
            arcname = str(rel)
            whl.writestr(arcname, data)
            rows.append(f"{arcname},{record_hash(data)},{len(data)}")
        rows.append(f"{dist_info}/RECORD,,")
        whl.writestr(f"{dist_info}/RECORD", "\n".join(rows) + "\n")
    partial.replace(target)
    for older in dest.glob("*.whl"):  # one kept release: the one this update replaces
        if older != target:
            older.unlink(missing_ok=True)
    return target
