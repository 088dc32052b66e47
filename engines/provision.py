"""Model files on disk: where they live, whether they are there, and fetching each once.

Layouts (protocol.md §9.4): sd-cpp keeps a model's files in
``<models_root>/<sanitised model id>/`` and reuses a flat ``<models_root>/<filename>`` left by
older workers; llama keeps them in ``<models_root>/llm/`` and reuses
``<models_root>/<filename>`` when its size equals ``approxBytes`` (or that is unknown). A
present file is used as is: no request, no re-verification. A missing one is fetched by
``engines.download`` after a free-space preflight, under an exclusive lock that makes two
threads or host processes asking for one file at once download it once. With a disk budget
(``models_max_gb``) the preflight makes room instead: it evicts the least recently used
model files no host holds, and refuses only when even they would not be enough
(``engines.model_cache``). Every file a job gets is held for it and its use recorded, so
no host's eviction takes it meanwhile. Input images (§9.3) pass the same URL gate and take
their extension from their bytes, never their URL.

Everything here runs on the host's job thread and blocks; it never picks an engine or
decides what a job needs, and never falls back: a file that cannot be had fails the job.

Errors (all ``ProvisionError``; ``engines.download`` adds the transfer ones):

    invalid <what> URL "<raw>"                      the URL does not parse
    <what> URL must use https (...): <url>          plain http to another host, or not http
    model filename must be a plain file name: ...   a name that could leave the cache dir
    not enough disk space for <file>: ...           the declared size + 10 % does not fit
    not enough room for <file>: ...                 ... nor would it after evicting (budget)
    <file> was evicted right after its download     other hosts' downloads took the room
    input image ... is not a JPEG, PNG, ...         the body is no image format we know
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal, assert_never

from engines.download import download_file, format_fields, part_path
from engines.errors import ProvisionError
from engines.file_holds import FileHold, hold_file, release_all
from engines.file_lock import exclusive_lock
from engines.model_cache import JOB_FILES, host_budget, make_room, touch_used, trim_to_budget
from engines.progress_throttle import ProgressFn
from engines.sniff import SNIFF_BYTES, sniff_image_ext
from engines.urlgate import check_url
from protocol.tasks import ModelFile, ModelSource

__all__ = [
    "LLM_SUBDIR",
    "Layout",
    "check_free_space",
    "check_url",
    "download_input_image",
    "ensure_file",
    "ensure_model_files",
    "existing_copy",
    "model_dir",
    "plain_file_name",
    "sanitise_model_id",
    "sniff_image_ext",
]

logger = logging.getLogger(__name__)

Layout = Literal["sdcpp", "llama"]
LLM_SUBDIR: Final = "llm"
MODEL_FILE: Final = "model file"
INPUT_IMAGE: Final = "input image"
U64_MAX: Final = 2**64 - 1
_SAFE_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
)


def plain_file_name(name: str) -> str:
    """``name`` if it is one plain path component, else ``ProvisionError``.

    Refused: empty, ``.``, ``..``, anything with ``/``, ``\\`` or NUL (so no absolute paths).
    """
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ProvisionError(f'model filename must be a plain file name: "{name}"')
    return name


def sanitise_model_id(model: str) -> str:
    """``model`` as one safe directory name: ``org/model:v2`` -> ``org_model_v2``.

    Characters outside ``[A-Za-z0-9._-]`` become ``_``, empty becomes ``_``, a leading ``.``
    becomes ``_`` (so neither ``..`` nor a hidden directory can come out).
    """
    safe = "".join(c if c in _SAFE_ID_CHARS else "_" for c in model)
    if not safe:
        return "_"
    if safe.startswith("."):
        return "_" + safe[1:]
    return safe


def model_dir(models_root: Path, model: str, layout: Layout) -> Path:
    """The directory a model's files are downloaded into for ``layout``."""
    match layout:
        case "sdcpp":
            return models_root / sanitise_model_id(model)
        case "llama":
            return models_root / LLM_SUBDIR
        case _:
            assert_never(layout)


def existing_copy(
    dest: Path,
    legacy_dir: Path | None = None,
    approx_bytes: int | None = None,
    legacy_needs_size_match: bool = False,
) -> Path | None:
    """``dest`` if it is there, else a reusable copy in ``legacy_dir``, else ``None``.

    With ``legacy_needs_size_match`` the legacy copy counts only when its size equals
    ``approx_bytes`` (any size does when that is unknown or 0).
    """
    if dest.is_file():
        return dest
    if legacy_dir is None:
        return None
    legacy = legacy_dir / dest.name
    if legacy == dest or not legacy.is_file():
        return None
    if legacy_needs_size_match and approx_bytes:
        size = legacy.stat().st_size
        if size != approx_bytes:
            logger.info(
                "legacy model copy not reused %s",
                format_fields(op="cache", path=legacy, size=size, approx_bytes=approx_bytes),
            )
            return None
    logger.info("reusing legacy model copy %s", format_fields(op="cache", path=legacy))
    return legacy


def check_free_space(
    filename: str,
    approx_bytes: int | None,
    directory: Path,
    *,
    free_bytes: Callable[[Path], int] | None = None,
) -> None:
    """Refuse a download whose declared size + 10 % does not fit where it will land.

    Measured on ``directory`` or its nearest existing ancestor (nothing is created); an
    unknown or zero size, or a failed probe, skips the check.
    """
    if not approx_bytes or approx_bytes <= 0:
        return
    probe = free_bytes if free_bytes is not None else _free_bytes
    anchor = next((p for p in (directory, *directory.parents) if p.exists()), None)
    if anchor is None:
        return
    try:
        available = probe(anchor)
    except OSError:
        return
    required = min(approx_bytes + approx_bytes // 10, U64_MAX)
    if available < required:
        raise ProvisionError(
            f"not enough disk space for {filename}: need ~{required} bytes (declared "
            f"{approx_bytes} + 10% headroom) but only {available} bytes are free on the "
            "models filesystem — free up space or move models_root"
        )


def ensure_file(
    file: ModelFile,
    dest_dir: Path,
    *,
    legacy_dir: Path | None = None,
    legacy_needs_size_match: bool = False,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    cache_root: Path | None = None,
    budget_bytes: int | None = None,
) -> Path:
    """The local path of ``file``: cached (``dest_dir`` first, then ``legacy_dir``) or fetched.

    ``on_progress(done, total)`` is called while the body streams (total 0 when unknown),
    at most ~10 times a second, and once more at the end with ``done == total``. The file
    stays held until this host's next provisioning. ``budget_bytes`` (None: the host's) is
    the budget of ``cache_root`` (default ``dest_dir``), where room is made.
    """
    JOB_FILES.clear()
    budget = host_budget() if budget_bytes is None else budget_bytes
    root = cache_root if cache_root is not None else dest_dir
    hold = _provide(
        file, dest_dir, legacy_dir, legacy_needs_size_match, on_progress, cancel, root, budget
    )
    JOB_FILES.replace([hold])
    return hold.path


def ensure_model_files(
    source: ModelSource,
    model: str,
    models_root: Path,
    *,
    layout: Layout,
    on_progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
    budget_bytes: int | None = None,
) -> dict[str, list[Path]]:
    """Every file of ``source`` on disk, by role, each role's paths in source order.

    All URLs and names are checked before the first byte is fetched, so a bad entry late in
    the list does not cost a multi-GB download first. ``on_progress`` gets the file name
    ahead of ``(done, total)``. The files stay held until this host's next provisioning;
    the previous one's are let go first, so they may make room for this one's downloads
    (a model still loaded stays held by its engine). ``budget_bytes``: ``models_root``'s
    budget (None: the host's, ``--models-max-bytes``).
    """
    for file in source.files:
        plain_file_name(file.filename)
        check_url(file.url, MODEL_FILE)
    dest_dir = model_dir(models_root, model, layout)
    budget = host_budget() if budget_bytes is None else budget_bytes
    JOB_FILES.clear()
    paths: dict[str, list[Path]] = {}
    holds: list[FileHold] = []
    try:
        for file in source.files:
            per_file = functools.partial(on_progress, file.filename) if on_progress else None
            hold = _provide(
                file,
                dest_dir,
                models_root,
                layout == "llama",
                per_file,
                cancel,
                models_root,
                budget,
            )
            holds.append(hold)
            paths.setdefault(file.role, []).append(hold.path)
    except BaseException:
        release_all(holds)
        raise
    JOB_FILES.replace(holds)
    return paths


def _provide(
    file: ModelFile,
    dest_dir: Path,
    legacy_dir: Path | None,
    legacy_needs_size_match: bool,
    on_progress: ProgressFn | None,
    cancel: threading.Event | None,
    root: Path,
    budget: int,
) -> FileHold:
    """``file`` held: found, or fetched after the preflight (and a trim to the budget)."""
    name = plain_file_name(file.filename)
    check_url(file.url, MODEL_FILE)
    dest = dest_dir / name

    def held_copy() -> FileHold | None:
        found = existing_copy(dest, legacy_dir, file.approx_bytes, legacy_needs_size_match)
        # None as well when an eviction took it since: then it is fetched again.
        return hold_file(found) if found is not None else None

    hold: FileHold | None = None
    try:
        hold = held_copy()
        if hold is None:
            dest_dir.mkdir(parents=True, exist_ok=True)
            # Locked by the part file's name: ``a.gguf`` and ``a.bin`` share ``a.part``.
            lock = part_path(dest).with_name(part_path(dest).name + ".lock")
            with exclusive_lock(lock):
                # Another thread or host may have fetched it while we waited.
                hold = held_copy() or _fetch(file, name, dest, root, budget, on_progress, cancel)
            if budget > 0:
                trim_to_budget(root, budget)  # a size that was not declared, or too small
        touch_used(hold.path)
    except BaseException as exc:
        if hold is not None:
            hold.release()
        if isinstance(exc, OSError):
            raise ProvisionError(f"cannot use the model cache at {dest_dir}: {exc}") from exc
        raise
    return hold


def _fetch(
    file: ModelFile,
    name: str,
    dest: Path,
    root: Path,
    budget: int,
    on_progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> FileHold:
    """Download ``file`` to ``dest`` (the caller holds its download lock) and hold it."""
    _preflight(file, name, dest, root, budget)
    download_file(file.url, dest, sha256=file.sha256, on_progress=on_progress, cancel=cancel)
    hold = hold_file(dest)
    if hold is None:
        raise ProvisionError(
            f"{name} was evicted right after its download: other engine hosts needed the "
            "room (models_max_gb is too small for the models in use at once)"
        )
    return hold


def download_input_image(
    url: str, dest_dir: Path, stem: str, *, cancel: threading.Event | None = None
) -> Path:
    """Fetch an init / mask / reference image to ``<dest_dir>/<stem>.<ext of its bytes>``.

    JPEG bytes served at ``latest.webp`` land in ``<stem>.jpg``. Content that is no known
    image format, like any download failure, raises ``ProvisionError`` and leaves nothing.
    """
    check_url(url, INPUT_IMAGE)
    if stem in ("", ".", "..") or any(c in stem for c in "/\\\0"):
        raise ProvisionError(f'input image stem must be a plain file name: "{stem}"')
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create {dest_dir}: {exc}") from exc
    staging = dest_dir / f"{stem}.download"
    started = time.monotonic()
    download_file(url, staging, what=INPUT_IMAGE, resume=False, cancel=cancel)
    try:
        with staging.open("rb") as f:
            head = f.read(SNIFF_BYTES)
        ext = sniff_image_ext(head)
        if ext is None:
            raise ProvisionError(
                f"input image {url} is not a JPEG, PNG, WebP, GIF, BMP or TIFF file "
                f"(it starts with {head[:8].hex(' ') or 'nothing'})"
            )
        final = dest_dir / f"{stem}.{ext}"
        staging.replace(final)
    except Exception as exc:
        staging.unlink(missing_ok=True)
        logger.warning(
            "download failed %s",
            format_fields(
                op="download",
                url=url,
                dest=staging,
                error=exc,
                elapsed_ms=int((time.monotonic() - started) * 1000),
            ),
        )
        if isinstance(exc, OSError):
            raise ProvisionError(f"cannot store input image {url}: {exc}") from exc
        raise
    return final


def _preflight(file: ModelFile, name: str, dest: Path, root: Path, budget: int) -> None:
    """Without a budget, the Rust worker's free-space check; with one, make room."""
    try:
        if budget > 0:
            make_room(root, name, max(0, file.approx_bytes or 0), budget, _free_bytes)
        else:
            check_free_space(name, file.approx_bytes, dest.parent)
    except ProvisionError as exc:
        logger.warning(
            "download failed %s",
            format_fields(op="download", url=file.url, dest=dest, error=exc, elapsed_ms=0),
        )
        raise


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free
