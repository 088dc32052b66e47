"""Wheels of this project for the update tests, built offline: one real build of the working
tree (setuptools, no build isolation), then releases derived from it by rewriting the wheel:
another version, another engine pin, a patched module. And a real, non-editable virtualenv
to install them in, whose dependencies come from the test's own environment (a ``.pth``
line), so nothing is downloaded."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

from supervisor.updates.keep import record_hash
from tests.support.contract_harness import REPO_ROOT

NAME = "studio_worker"
PACKAGES = ("protocol", "supervisor", "engines", "localstudio")


def build_wheel(dest: Path) -> Path:
    """``pip wheel`` of a copy of the working tree (the tree itself stays untouched)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = dest / "built"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob(f"{NAME}-*.whl")
    return wheel


def wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def derive_wheel(
    base: Path,
    dest_dir: Path,
    version: str,
    *,
    requires: dict[str, str] | None = None,
    appended: dict[str, str] | None = None,
) -> Path:
    """``base`` as release ``version``; ``requires`` rewrites the Requires-Dist line of a
    package (``{"llama-cpp-python": "llama-cpp-python==9.9.9; extra == 'llama'"}``);
    ``appended`` adds source text to the end of a module (``{"supervisor/x.py": "..."}``)."""
    old = wheel_version(base)
    old_info, new_info = f"{NAME}-{old}.dist-info", f"{NAME}-{version}.dist-info"
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / base.name.replace(f"-{old}-", f"-{version}-")
    rows = []
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for item in src.infolist():
            name = item.filename.replace(old_info, new_info)
            if name == f"{new_info}/RECORD":
                continue
            data = src.read(item)
            if name == f"{new_info}/METADATA":
                data = _metadata(data.decode(), version, requires or {}).encode()
            if appended and name in appended:
                data = data + b"\n" + appended[name].encode()
            out.writestr(name, data)
            rows.append(f"{name},{record_hash(data)},{len(data)}")
        rows.append(f"{new_info}/RECORD,,")
        out.writestr(f"{new_info}/RECORD", "\n".join(rows) + "\n")
    return target


def _metadata(text: str, version: str, requires: dict[str, str]) -> str:
    lines = []
    for line in text.split("\n"):
        if line.startswith("Version: "):
            line = f"Version: {version}"
        elif line.startswith("Requires-Dist: "):
            req = line.removeprefix("Requires-Dist: ")
            for package, replacement in requires.items():
                if req.startswith(package):
                    line = f"Requires-Dist: {replacement}"
        lines.append(line)
    return "\n".join(lines)


def _dependencies_dir(dest: Path) -> Path:
    """Links to every package of the test environment but this project (its editable
    install would be a second, foreign studio-worker that pip might try to replace)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in Path(site.getsitepackages()[0]).iterdir():
        name = entry.name
        if name.startswith((NAME, "__editable__")) or name.endswith(".pth"):
            continue
        (dest / name).symlink_to(entry)
    return dest


def make_venv(path: Path, wheel: Path) -> Path:
    """A virtualenv with ``wheel`` installed (not editable); returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies (and pip) of the test environment, after the venv's own packages.
    deps = _dependencies_dir(path.parent / f"{path.name}-deps")
    (Path(own_site) / "_test_dependencies.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        cwd=path,  # not the checkout: `python -m` would see its egg-info as installed
    )
    return python
