"""Fetch one URL into one file: resumable, verified, atomic (protocol.md §9.4).

The body streams into a part file beside the destination, ``dest.with_suffix(".part")``:
the extension is *replaced* (``model.gguf`` -> ``model.part``), as in the Rust worker, so a
part left by either worker is resumed by the other. An existing part is resumed with
``Range: bytes=<len>-``; a ``416`` or a ``206`` whose ``Content-Range`` does not start at
``<len>`` deletes it and starts again once, a ``200`` overwrites it. Every byte (the kept
prefix first) goes through SHA-256; the count must equal this response's
``Content-Length``, then the digest must match, then the part is renamed over ``dest``.
On any failure the part is deleted, one warning with ``op=download`` is logged and
``ProvisionError`` raised, so nothing half-written can pass for a model later. Redirects
are followed, and every hop goes through the URL gate.

This module does not decide where files live or whether they are cached, and takes no
locks: ``engines.provision`` does both.

Errors (all ``ProvisionError``, raised by ``download_file``):

    GET <url> -> <status>                  the server answered with a non-2xx status
    GET <url> failed: <cause>              connect / TLS / read error or timeout
    size mismatch: ...                     fewer or more bytes than Content-Length declared
    sha256 mismatch: ...                   the body is not the file the registry describes
    cannot write <part>: <cause>           the local disk refused the bytes
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Final

import httpx

from engines.errors import ProvisionError
from engines.progress_throttle import ProgressFn, ProgressThrottle
from engines.urlgate import check_url

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S: Final = math.inf
"""No whole-transfer cap in the host: a 20 GB file on a slow link may take hours, and the
supervisor already stops a download that stalls (``download_stall_s``) or runs past
``download_deadline_s``. Callers that want a cap of their own pass ``timeout_s``."""
CONNECT_TIMEOUT_S: Final = 30.0
READ_TIMEOUT_S: Final = 120.0
HASH_CHUNK_BYTES: Final = 1 << 20


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@functools.cache
def user_agent() -> str:
    try:
        version = metadata.version("studio-worker")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"studio-worker/{version}"


def part_path(dest: Path) -> Path:
    """Where ``dest`` is written before its rename (``model.gguf`` -> ``model.part``)."""
    part = dest.with_suffix(".part")
    # A file that is itself called ``x.part`` must not be its own part file.
    return part if part != dest else dest.with_name(dest.name + ".part")


class _RestartError(Exception):
    """The server refused or ignored the resume; the part is useless, start from byte 0."""


class _Transfer:
    """One download of ``url`` into ``part``; remembers the last status for the log line."""

    def __init__(
        self,
        url: str,
        part: Path,
        sha256: str | None,
        progress: ProgressThrottle,
        cancel: threading.Event | None,
        timeout_s: float,
    ) -> None:
        self.url = url
        self.part = part
        self.expected = sha256.strip().lower() if sha256 is not None else None
        self.progress = progress
        self.cancel = cancel
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.status: int | None = None

    def fetch(self, client: httpx.Client) -> int:
        """GET the body into the part file, verified; returns the file size."""
        offset = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with client.stream("GET", self.url, headers=headers) as response:
            self.status = response.status_code
            offset = self._kept_prefix(response, offset)
            if not response.is_success:
                raise ProvisionError(f"GET {self.url} -> {status_text(response.status_code)}")
            hasher = hashlib.sha256()
            if offset:
                _hash_file_prefix(self.part, offset, hasher)
            declared = _content_length(response)
            total = offset + declared if declared is not None else 0
            written = self._write_body(response, offset, total, hasher)
        if declared is not None and written != declared:
            raise ProvisionError(
                f"size mismatch: wrote {written} bytes but the server declared Content-Length "
                f"{declared} (download truncated or corrupt)"
            )
        actual = hasher.hexdigest()
        if self.expected is not None and actual != self.expected:
            raise ProvisionError(
                f"sha256 mismatch: downloaded body hashes to {actual} but the registry expects "
                f"{self.expected} (corrupted or tampered download)"
            )
        size = offset + written
        self.progress.finish(size, size)
        return size

    def _kept_prefix(self, response: httpx.Response, offset: int) -> int:
        """How many bytes of the part the response continues (0: write it afresh)."""
        status = response.status_code
        if status == httpx.codes.PARTIAL_CONTENT:
            content_range = response.headers.get("content-range")
            if content_range_start(content_range) == offset:
                return offset
            if offset:
                raise _RestartError
            raise ProvisionError(
                f"GET {self.url} -> {status_text(status)} with Content-Range "
                f"{content_range!r} to a request without Range"
            )
        if offset and status == httpx.codes.REQUESTED_RANGE_NOT_SATISFIABLE:
            raise _RestartError
        return 0

    def _write_body(
        self, response: httpx.Response, offset: int, total: int, hasher: hashlib._Hash
    ) -> int:
        written = 0
        self.progress.update(offset, total)
        with self.part.open("ab" if offset else "wb") as out:
            for chunk in _body_chunks(response):
                if self.cancel is not None and self.cancel.is_set():
                    raise ProvisionError(f"download of {self.url} cancelled")
                if time.monotonic() > self.deadline:
                    raise ProvisionError(f"GET {self.url} took longer than {self.timeout_s:g} s")
                out.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
                self.progress.update(offset + written, total)
            out.flush()
            os.fsync(out.fileno())
        return written


def download_file(
    url: str,
    dest: Path,
    *,
    what: str = "model file",
    sha256: str | None = None,
    resume: bool = True,
    on_progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> int:
    """Download ``url`` to ``dest`` (replaced if present); returns its size in bytes.

    ``resume=False`` discards a part file left from before instead of continuing it (for
    files whose name does not identify their content). ``cancel`` aborts between chunks.
    """
    part = part_path(dest)
    started = time.monotonic()
    transfer = _Transfer(url, part, sha256, ProgressThrottle(on_progress), cancel, timeout_s)
    try:
        check_url(url, what)
        if not resume:
            part.unlink(missing_ok=True)
        with _client(what) as client:
            try:
                size = transfer.fetch(client)
            except _RestartError:
                part.unlink()
                size = transfer.fetch(client)
        part.replace(dest)
    except Exception as exc:
        part.unlink(missing_ok=True)
        error = _as_provision_error(exc, url, part)
        _log_failure(url, dest, sha256, transfer.status, error or exc, started)
        if error is None or error is exc:
            raise
        raise error from exc
    logger.info(
        "download finished %s",
        format_fields(op="download", url=url, dest=dest, bytes=size, elapsed_ms=_ms(started)),
    )
    return size


def status_text(code: int) -> str:
    """``404 Not Found``, as the Rust worker renders a status."""
    return f"{code} {httpx.codes.get_reason_phrase(code)}".rstrip()


def content_range_start(value: str | None) -> int | None:
    """The first byte position of ``bytes <start>-<end>/<size>``, or ``None``."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value)
    return int(match.group(1)) if match else None


def format_fields(**fields: object) -> str:
    """``key=value`` pairs for a log line; values with spaces or quotes are JSON-quoted."""
    rendered = []
    for key, value in fields.items():
        text = str(value)
        if not text or any(c.isspace() or c in "\"'=" for c in text):
            text = json.dumps(text, ensure_ascii=False)
        rendered.append(f"{key}={text}")
    return " ".join(rendered)


def _client(what: str) -> httpx.Client:
    def gate(request: httpx.Request) -> None:
        check_url(str(request.url), what)

    return httpx.Client(
        # identity: byte counts must compare with Content-Length and hashes with the registry
        headers={"User-Agent": user_agent(), "Accept-Encoding": "identity"},
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=True,
        event_hooks={"request": [gate]},
    )


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _body_chunks(response: httpx.Response) -> Iterator[bytes]:
    try:
        yield from response.iter_raw()
    except httpx.RemoteProtocolError:
        if _content_length(response) is None:
            raise
        # The peer closed before Content-Length bytes: the size check names the shortfall.


def _hash_file_prefix(path: Path, length: int, hasher: hashlib._Hash) -> None:
    with path.open("rb") as f:
        remaining = length
        while remaining:
            chunk = f.read(min(HASH_CHUNK_BYTES, remaining))
            if not chunk:
                raise ProvisionError(f"{path} shrank while its prefix was hashed")
            hasher.update(chunk)
            remaining -= len(chunk)


def _as_provision_error(exc: Exception, url: str, part: Path) -> ProvisionError | None:
    """The ProvisionError to raise for ``exc``; ``None`` for an unexpected error (a bug)."""
    if isinstance(exc, ProvisionError):
        return exc
    if isinstance(exc, httpx.HTTPError):
        return ProvisionError(f"GET {url} failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return ProvisionError(f"cannot write {part}: {exc}")
    return None


def _log_failure(
    url: str,
    dest: Path,
    sha256: str | None,
    status: int | None,
    error: BaseException,
    started: float,
) -> None:
    fields: dict[str, object] = {"op": "download", "url": url, "dest": dest}
    if sha256 is not None:
        fields["sha256"] = sha256.strip().lower()
    if status is not None:
        fields["status"] = status
    fields["error"] = str(error)
    fields["elapsed_ms"] = _ms(started)
    logger.warning("download failed %s", format_fields(**fields))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
