"""The model cache under ``models_root`` as a whole: its disk budget, eviction, use times and
the files this host holds for its job.

With a budget (``models_max_gb``; a host gets it as ``--models-max-bytes``), a download
first makes room: it scans the directory, and when the declared size would pass the budget
or the free disk, it locks the least recently used model files that no host holds (an
exclusive lock taken without blocking, ``engines.file_holds``) until they cover the
shortfall, then deletes them. When even every unheld file would not be enough, nothing is
deleted and the download is refused with the figures. After a download the cache is trimmed
back under the budget (a size that was not declared, or was declared too small). Without a
budget nothing is ever deleted (the Rust worker's behaviour). The rules are in
``engines.cache_budget``.

Use time is the file's access time, set on every use (its modification time is left alone:
a warm model is reloaded when that changes). A host holds the files its latest job
provisioned (``JOB_FILES``) until its next job starts provisioning, and the engines hold the
files of every model they keep loaded (``engines.warm_models``), so a file in use is never
evicted, by this host or another one.

Blocking I/O on the host's job thread; it never decides what a job needs.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from engines.cache_budget import CachedFile, eviction_order, is_evictable, room_need
from engines.download import format_fields
from engines.errors import ProvisionError
from engines.file_holds import FileHold, HeldFiles, lock_for_removal, release_all

logger = logging.getLogger("engines.provision")

FreeBytesFn = Callable[[Path], int]

JOB_FILES: Final = HeldFiles()
"""The files this host's latest job provisioned, held until its next job provisions."""

_host_budget_bytes = 0


def set_host_budget(max_bytes: int) -> None:
    """This host's budget for ``models_root`` in bytes (0: none); ``python -m engines`` sets
    it once at start from ``--models-max-bytes``."""
    global _host_budget_bytes
    _host_budget_bytes = max(0, max_bytes)


def host_budget() -> int:
    return _host_budget_bytes


def scan(root: Path) -> list[CachedFile]:
    """Every regular file under ``root`` (symlinks are neither followed nor counted)."""
    return list(_walk(root))


def _walk(root: Path) -> Iterator[CachedFile]:
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # deleted while we looked: nothing to count
            if stat.S_ISREG(st.st_mode):
                evictable = is_evictable(path.relative_to(root))
                yield CachedFile(path, st.st_size, st.st_atime_ns, evictable)


def touch_used(path: Path) -> None:
    """Record a use of ``path`` for least-recently-used eviction: its access time becomes
    now, its modification time stays. Best effort (a file of another owner refuses it)."""
    try:
        st = path.stat()
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError as exc:
        logger.debug("cannot record the use of %s: %s", path, exc)


def make_room(
    root: Path, filename: str, declared: int, budget: int, free_bytes: FreeBytesFn
) -> None:
    """Evict what a download of ``declared`` bytes into ``root`` needs; raises
    ``ProvisionError`` (nothing deleted) when the unheld model files are not enough."""
    files = scan(root)
    used = sum(f.size for f in files)
    free = _probe(root, free_bytes)
    if declared > budget:
        raise ProvisionError(
            f"not enough room for {filename}: its declared size of {declared} bytes is more "
            f"than the whole model cache budget (models_max_gb = {budget} bytes) — raise "
            "models_max_gb"
        )
    need = room_need(budget=budget, used=used, declared=declared, free_disk=free)
    if need.to_free == 0:
        return
    locked = _lock_until(eviction_order(files), need.to_free)
    freed = sum(f.size for f, _ in locked)
    if freed < need.to_free:
        release_all(hold for _, hold in locked)
        raise ProvisionError(
            f"not enough room for {filename}: {need.to_free} bytes must be freed first "
            f"(declared {declared} bytes; models_root holds {used} bytes of its {budget}-byte "
            f"budget, models_max_gb; {'unknown' if free is None else free} bytes are free on "
            f"disk) but the model files no engine host holds come to only {freed} bytes — "
            "raise models_max_gb, free up space or move models_root"
        )
    _delete(locked, reason=f"making room for {filename}")


def trim_to_budget(root: Path, budget: int) -> None:
    """Evict least recently used unheld files until ``root`` is within ``budget`` again;
    best effort, a warning when held files keep it over."""
    files = scan(root)
    over = sum(f.size for f in files) - budget
    if over <= 0:
        return
    locked = _lock_until(eviction_order(files), over)
    _delete(locked, reason="back under the budget")
    freed = sum(f.size for f, _ in locked)
    if freed < over:
        fields = format_fields(op="cache", root=root, bytes=budget + over - freed, budget=budget)
        logger.warning("model cache over its budget, the rest is held by engine hosts %s", fields)


def _lock_until(order: list[CachedFile], need: int) -> list[tuple[CachedFile, FileHold]]:
    """Exclusive locks on files of ``order``, in order, skipping held ones, until they add
    up to ``need`` bytes (or the files run out)."""
    locked: list[tuple[CachedFile, FileHold]] = []
    total = 0
    try:
        for file in order:
            if total >= need:
                break
            hold = lock_for_removal(file.path)
            if hold is not None:
                locked.append((file, hold))
                total += file.size
    except BaseException:
        release_all(hold for _, hold in locked)
        raise
    return locked


def _delete(locked: list[tuple[CachedFile, FileHold]], *, reason: str) -> None:
    for file, hold in locked:
        try:
            file.path.unlink(missing_ok=True)  # under its lock: nobody holds it meanwhile
            fields = format_fields(op="cache", path=file.path, bytes=file.size, reason=reason)
            logger.info("evicted model file %s", fields)
        except OSError as exc:
            fields = format_fields(op="cache", path=file.path, error=exc)
            logger.warning("cannot evict model file %s", fields)
        finally:
            hold.release()


def _probe(root: Path, free_bytes: FreeBytesFn) -> int | None:
    anchor = next((p for p in (root, *root.parents) if p.exists()), None)
    if anchor is None:
        return None
    try:
        return free_bytes(anchor)
    except OSError:
        return None
