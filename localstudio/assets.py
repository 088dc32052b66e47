"""Binary results on disk: ``<data_dir>/assets/<jobId>.<ext>``.

An upload is streamed to a hidden ``.part`` file in the same directory and renamed into
place atomically, so a reader never sees half a file. The extension comes from the
worker and is checked to be a short lowercase alphanumeric word (no path tricks); the
content type served back is the one the worker used to send it (protocol.md §6.3).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Final

import anyio
from starlette.datastructures import UploadFile

from localstudio.schema import ASSETS_DIRNAME

CHUNK_BYTES: Final = 1 << 20
_EXT: Final = re.compile(r"^[a-z0-9]{1,8}$")
_MEDIA_TYPES: Final = {
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "mp4": "video/mp4",
}


def valid_ext(ext: str) -> bool:
    return _EXT.fullmatch(ext) is not None


def media_type_for(path: str) -> str:
    """The content type for an asset file name, by its extension."""
    _, _, ext = path.rpartition(".")
    return _MEDIA_TYPES.get(ext.lower(), "application/octet-stream")


def asset_relpath(job_id: str, ext: str) -> str:
    """Where a job's asset lives, relative to the data dir (what the jobs table stores)."""
    return f"{ASSETS_DIRNAME}/{job_id}.{ext}"


async def store_upload(upload: UploadFile, data_dir: Path, relpath: str) -> int:
    """Stream ``upload`` to ``data_dir/relpath`` via a ``.part`` file; returns the size."""
    final = data_dir / relpath
    part = final.with_name(f".{final.name}.{secrets.token_hex(4)}.part")
    size = 0
    try:
        async with await anyio.open_file(part, "wb") as out:
            while chunk := await upload.read(CHUNK_BYTES):
                size += len(chunk)
                await out.write(chunk)
        await anyio.Path(part).replace(final)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.Path(part).unlink(missing_ok=True)
        raise
    return size
