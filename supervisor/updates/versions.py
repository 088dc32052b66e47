"""Pure decisions about releases: which is newer (PEP 440), whether a release pins other
engine wrappers than the installed one, and what the operator runs instead."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

PACKAGE: Final = "studio-worker"
# Built from source with the operator's CMAKE_ARGS (CUDA, Vulkan...): pip would rebuild them
# without those flags, so a release that moves these pins is never installed unattended.
ENGINE_PACKAGES: Final = ("llama-cpp-python", "stable-diffusion-cpp-python")
_EXTRA: Final = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def parse_version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def is_newer(candidate: str, installed: str, *, prerelease: bool) -> bool:
    """``candidate`` is a release to move to: later than ``installed``, and not a
    pre-release unless those are wanted."""
    new, old = parse_version(candidate), parse_version(installed)
    if new is None:
        return False
    if new.is_prerelease and not prerelease:
        return False
    return old is None or new > old


def engine_pins(requires: Iterable[str]) -> dict[str, str]:
    """``{package: specifier}`` of the engine wrappers among ``Requires-Dist`` lines."""
    pins: dict[str, str] = {}
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        name = canonicalize_name(req.name)
        if name in ENGINE_PACKAGES:
            pins[name] = str(req.specifier)
    return pins


def pins_moved(installed: Iterable[str], candidate: Iterable[str]) -> list[str]:
    """The engine wrappers whose pin differs between the two releases, sorted."""
    old, new = engine_pins(installed), engine_pins(candidate)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))


def rebuild_command(python: str, version: str) -> str:
    """What the operator runs to update with the engines rebuilt under their own flags."""
    return (
        f'CMAKE_ARGS="<your GPU flags, e.g. -DGGML_CUDA=on>" {python} -m pip install '
        f"--force-reinstall --no-cache-dir '{PACKAGE}[llama,sdcpp]=={version}'"
    )


def installed_extras(requires: Iterable[str], is_installed: Callable[[str], bool]) -> list[str]:
    """The extras of the running release whose every requirement is installed (``llama``
    when llama-cpp-python is): the new release is installed with the same ones."""
    needs: dict[str, list[str]] = {}
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        marker = str(req.marker or "")
        for extra in _EXTRA.findall(marker):
            needs.setdefault(extra, []).append(req.name)
    return sorted(e for e, names in needs.items() if all(is_installed(n) for n in names))
