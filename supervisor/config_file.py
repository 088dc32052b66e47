"""The bytes of config.toml: style-preserving edits and the atomic, owner-only write.

``patch_toml`` changes the given top-level keys of an operator's file and leaves every other
byte as it was (comments, blank lines, key order, number spelling, keys this worker does not
know), through tomlkit's round-trip document. ``write_private`` replaces a file atomically
(temp file in the same directory, fsync, rename, directory fsync) with mode 0600, because
the file holds credentials; ``make_private`` sets an existing file holding one to 0600
when its group or other bits are set. This module knows nothing about which keys exist or
what they mean (``supervisor.config`` decides what changed) and its log lines name paths
and modes only, never text: the text it handles may hold secrets.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import tomlkit
from tomlkit.container import OutOfOrderTableProxy
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Item, Table

log = logging.getLogger("supervisor.config")

PRIVATE_MODE: Final = 0o600
SHARED_MODE_BITS: Final = 0o077  # group and other: none may be set on a file with secrets


class UnpatchableError(Exception):
    """The existing text is not TOML that tomlkit can edit; the caller writes it whole.
    Carries no detail on purpose: the parser's message could quote a secret."""


def render_toml(values: Mapping[str, Any]) -> str:
    """A fresh file: one ``key = value`` line per entry, in the mapping's order."""
    return tomlkit.dumps(dict(values))


def table_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any | None]:
    """What differs between two tables, key by key (None: gone), nested tables likewise."""
    changes: dict[str, Any | None] = {}
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict | None):
            # Known keys only: what else the operator keeps in the table stays.
            changes[key] = table_changes(before, after or {})
        else:
            changes[key] = after if after != {} else None
    return changes


def patch_toml(text: str, changes: Mapping[str, Any | None]) -> str:
    """``text`` with each key of ``changes`` set to its value (``None``: the key removed; a
    mapping: a table, whose keys are patched the same way).

    A replaced value keeps its line's trailing comment; a new key goes after the last
    top-level key (before the first ``[table]``, where tomlkit puts it). Raises
    ``UnpatchableError`` when ``text`` does not parse.
    """
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError:
        raise UnpatchableError from None
    try:
        _patch_container(doc, changes)
    except (TOMLKitError, AttributeError, KeyError, TypeError, ValueError):
        raise UnpatchableError from None  # a layout tomlkit cannot edit in place
    return doc.as_string()


def _patch_container(container: Any, changes: Mapping[str, Any | None]) -> None:
    """Set each key (None: remove it). A mapping for an existing table patches only the keys
    it names, so what else the operator keeps in that table stays."""
    for key, value in changes.items():
        if value is None:
            if key in container:
                del container[key]
            continue
        old = container.get(key)
        if isinstance(value, Mapping) and isinstance(old, Table | OutOfOrderTableProxy):
            _patch_container(old, value)
            if not old:
                del container[key]  # nothing left in it: no empty header stays behind
            continue
        if isinstance(value, Mapping) and not any(v is not None for v in value.values()):
            continue  # removing keys from a table the file does not have
        if isinstance(value, Mapping):
            new: Item = tomlkit.table(is_super_table=True)
            _patch_container(new, {k: v for k, v in value.items() if v is not None})
        else:
            new = tomlkit.item(value)
        if isinstance(old, Item) and not isinstance(value, Mapping):
            # The operator's note on this line is about the key, not the old value.
            new.trivia.comment = old.trivia.comment
            new.trivia.comment_ws = old.trivia.comment_ws
        container[key] = new


def too_open(mode: int, *, holds_secret: bool) -> bool:
    """A file holding a secret must grant nothing to group or others (a Rust worker's file
    or a hand copy may be 0644, and nothing would tighten it until some later save)."""
    return os.name == "posix" and holds_secret and bool(mode & SHARED_MODE_BITS)


def make_private(path: Path, *, holds_secret: bool) -> None:
    """Set ``path`` to 0600 when ``too_open``, with a warning either way it goes."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # it was just read; a delete since then is the next load's business
    if not too_open(mode, holds_secret=holds_secret):
        return
    try:
        path.chmod(PRIVATE_MODE)
    except OSError as exc:
        log.warning(
            "config: %s holds credentials and is readable by group or others (mode %04o), "
            "and setting it to 0600 failed: %s; run `chmod 600 %s`",
            path,
            mode,
            exc.strerror,
            path,
        )
        return
    log.warning(
        "config: %s holds credentials but was readable by group or others (mode %04o); "
        "set it to 0600",
        path,
        mode,
    )


def write_private(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600; parent directories are created.

    Raises ``OSError``; no temp file is left behind either way.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(tmp).chmod(PRIVATE_MODE)  # mkstemp already makes it 0600; say so explicitly
        Path(tmp).replace(path)
        tmp = None
        _fsync_dir(path.parent)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
