"""Asking the package index for the newest release, through pip itself, so the operator's
index settings (``pip.conf``, ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, proxies, certificates)
apply exactly as they do to their own installs. Blocking: callers run it in a thread."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from supervisor.errors import UpdateError
from supervisor.updates.versions import PACKAGE

PIP_TIMEOUT_S: Final = 180.0
INSTALL_TIMEOUT_S: Final = 1800.0
PIP_QUIET: Final = ("--disable-pip-version-check", "--no-input")


@dataclass(frozen=True)
class Release:
    version: str
    requires: tuple[str, ...]  # its Requires-Dist lines, extras' markers included


def pip_error(stderr: str, fallback: str) -> str:
    """pip's own reason: its last ``ERROR:`` line, else its last line, else ``fallback``."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1]
    return lines[-1] if lines else fallback


def run_pip(python: str, args: list[str], *, timeout_s: float, what: str) -> str:
    """``python -m pip ARGS``; stdout, or UpdateError with pip's reason."""
    try:
        done = subprocess.run(
            [python, "-m", "pip", *args],
            # `-m` puts the working directory first on sys.path: a checkout there would pass
            # for an installed studio-worker (its egg-info). The environment's root is neutral.
            cwd=sys.prefix,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise UpdateError(f"{what}: pip did not finish within {timeout_s:.0f} s") from exc
    except OSError as exc:
        raise UpdateError(f"{what}: cannot run {python}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        if "No module named pip" in done.stderr:
            raise UpdateError(f"{what}: pip is not installed for {python}")
        reason = pip_error(done.stderr, f"pip exited with {done.returncode}")
        raise UpdateError(f"{what}: {reason}")
    return done.stdout


def parse_report(text: str) -> Release:
    """The release pip's ``--report`` says it would install."""
    try:
        report = json.loads(text)
        item = next(
            i
            for i in report["install"]
            if i["metadata"]["name"].lower().replace("_", "-") == PACKAGE
        )
        meta = item["metadata"]
        return Release(str(meta["version"]), tuple(meta.get("requires_dist") or ()))
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise UpdateError(
            f"update check: pip's report names no {PACKAGE} release ({type(exc).__name__})"
        ) from exc


def newest_release(python: str, *, prerelease: bool) -> Release:
    """The release ``pip install --upgrade`` would pick now (nothing is installed: a dry
    run that resolves this one package, whatever is installed)."""
    with tempfile.TemporaryDirectory(prefix="studio-worker-check-") as tmp:
        # A file, not stdout: an operator's `verbose` pip.conf would mix its lines in.
        report = Path(tmp) / "report.json"
        args = [
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--quiet",
            *PIP_QUIET,
            "--report",
            str(report),
            *(["--pre"] if prerelease else []),
            PACKAGE,
        ]
        run_pip(python, args, timeout_s=PIP_TIMEOUT_S, what="update check")
        try:
            text = report.read_text()
        except OSError as exc:
            raise UpdateError(f"update check: pip wrote no report ({exc.strerror})") from exc
    return parse_report(text)


def install_release(python: str, version: str, extras: list[str]) -> None:
    """Install ``studio-worker[extras]==version`` (its new dependencies too, those of the
    extras installed now included) into ``python``'s environment."""
    name = f"{PACKAGE}[{','.join(extras)}]" if extras else PACKAGE
    args = ["install", "--quiet", *PIP_QUIET, f"{name}=={version}"]
    run_pip(python, args, timeout_s=INSTALL_TIMEOUT_S, what=f"installing {version}")


def install_wheel_offline(python: str, wheel: str) -> None:
    """Put a kept wheel back, without touching the index or any dependency."""
    args = ["install", "--quiet", *PIP_QUIET, "--no-index", "--no-deps", "--force-reinstall"]
    run_pip(python, [*args, wheel], timeout_s=PIP_TIMEOUT_S, what="rolling back")
