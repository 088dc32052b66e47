"""HTTP calls to the studio (protocol.md §6): registration request and poll, result upload.

Every call goes to ``<base>/graphics/api/...`` with a 60 s timeout and the user agent
``studio-worker/<version>``. Any 2xx is success; anything else raises StudioHttpError
``<op> failed: <status> — <body>``; no answer raises StudioTransportError. Success leaves a
debug line, failure a warning (op, endpoint, status, elapsed_ms, body). Tokens and secrets
travel only in the ``Authorization`` header and are never logged.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any, Final, Self

import anyio
import httpx
import msgspec

from protocol.studio import (
    RegisterRequest,
    RegisterRequestAccepted,
    RegistrationStatus,
    encode_json,
)
from supervisor import USER_AGENT
from supervisor.errors import (
    StudioError,
    StudioHttpError,
    StudioResponseError,
    StudioTransportError,
)
from supervisor.studio.urls import api_url, path_segment

log = logging.getLogger("supervisor.studio_http")

TIMEOUT_S: Final = 60.0
UPLOAD_ATTEMPTS: Final = 3  # the first try plus two retries on 5xx / transport errors
UPLOAD_RETRY_PAUSE_S: Final = 1.0  # doubled per retry: 1 s, then 2 s
ERROR_BODY_MAX_CHARS: Final = 2000

OP_REGISTER_REQUEST: Final = "register-request"
OP_REGISTER_POLL: Final = "register-poll"
OP_COMPLETE: Final = "complete"

_MIME_FOR_EXT: Final = {
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "mp4": "video/mp4",
}
_accepted_decoder: Final = msgspec.json.Decoder(RegisterRequestAccepted)
_status_decoder: Final[msgspec.json.Decoder[RegistrationStatus]] = msgspec.json.Decoder(
    RegistrationStatus
)


def mime_for_ext(ext: str) -> str:
    """The upload part's content type (§6.3); ``application/octet-stream`` when unknown."""
    return _MIME_FOR_EXT.get(ext.lower(), "application/octet-stream")


def _clip(body: str) -> str:
    if len(body) <= ERROR_BODY_MAX_CHARS:
        return body
    return body[:ERROR_BODY_MAX_CHARS] + "…"


class StudioHttp:
    """One pooled httpx client for the studio's HTTP endpoints; use ``async with``.

    ``retry_pause_s`` is the upload's first retry pause (doubled for the second);
    ``transport`` lets tests or a caller swap httpx's transport.
    """

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        retry_pause_s: float = UPLOAD_RETRY_PAUSE_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._retry_pause_s = retry_pause_s
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(
        self, op: str, method: str, url: str, *, expected: int | None = None, **request: Any
    ) -> httpx.Response:
        """One round trip; returns a 2xx (or ``expected``) response or raises StudioError."""
        started = time.monotonic()
        try:
            response = await self._client.request(method, url, **request)
        except httpx.TransportError as exc:
            elapsed_ms = round((time.monotonic() - started) * 1000)
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning(
                'studio request failed op="%s" endpoint=%s elapsed_ms=%d error="%s"',
                op, url, elapsed_ms, cause,
            )  # fmt: skip
            raise StudioTransportError(op, cause) from None
        elapsed_ms = round((time.monotonic() - started) * 1000)
        if response.is_success or response.status_code == expected:
            log.debug(
                'studio request ok op="%s" endpoint=%s status=%d elapsed_ms=%d',
                op, url, response.status_code, elapsed_ms,
            )  # fmt: skip
            return response
        body = _clip(response.text)
        log.warning(
            'studio request failed op="%s" endpoint=%s status=%d elapsed_ms=%d body="%s"',
            op, url, response.status_code, elapsed_ms, body,
        )  # fmt: skip
        raise StudioHttpError(op, response.status_code, body)

    async def register_request(self, base: str, body: RegisterRequest) -> RegisterRequestAccepted:
        """``POST /workers/register-request`` (no auth); the studio's request id and status."""
        op = OP_REGISTER_REQUEST
        response = await self._send(
            op,
            "POST",
            api_url(base, "/workers/register-request"),
            content=encode_json(body),
            headers={"Content-Type": "application/json"},
        )
        try:
            return _accepted_decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            raise StudioResponseError(op, str(exc)) from None

    async def poll_registration(
        self, base: str, request_id: str, secret: str
    ) -> RegistrationStatus | None:
        """``GET /workers/register-requests/<id>`` with the raw secret as Bearer token.

        Returns None for 404 (the studio forgot the request: submit a fresh one).
        """
        op = OP_REGISTER_POLL
        url = api_url(base, f"/workers/register-requests/{path_segment(request_id)}")
        response = await self._send(
            op,
            "GET",
            url,
            expected=httpx.codes.NOT_FOUND,
            headers={"Authorization": f"Bearer {secret}"},
        )
        if response.status_code == httpx.codes.NOT_FOUND:
            return None
        try:
            return _status_decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            raise StudioResponseError(op, str(exc)) from None

    async def upload_result(
        self,
        base: str,
        worker_id: str,
        token: str,
        job_id: str,
        prompt: str,
        ext: str,
        data: bytes,
    ) -> None:
        """``POST /workers/<id>/jobs/<job>/complete`` as multipart ``prompt``, ``ext``, ``image``.

        ``prompt`` must be the full prompt (a preview once overwrote the studio's prompts).
        5xx and transport errors are retried twice (pauses 1 s, 2 s); 4xx is final.
        """
        op = OP_COMPLETE
        mime = mime_for_ext(ext)
        url = api_url(
            base, f"/workers/{path_segment(worker_id)}/jobs/{path_segment(job_id)}/complete"
        )
        log.debug(
            'uploading result op="%s" job_id="%s" ext="%s" mime="%s" bytes=%d',
            op, job_id, ext, mime, len(data),
        )  # fmt: skip
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            try:
                await self._send(
                    op,
                    "POST",
                    url,
                    headers={"Authorization": f"Bearer {token}"},
                    data={"prompt": prompt, "ext": ext},
                    files={"image": (f"{job_id}.{ext}", data, mime)},
                )
                return
            except StudioError as exc:
                if attempt == UPLOAD_ATTEMPTS or not _upload_retryable(exc):
                    raise
                pause_s = self._retry_pause_s * 2 ** (attempt - 1)
                log.info(
                    'retrying upload op="%s" job_id="%s" attempt=%d pause_s=%g',
                    op, job_id, attempt + 1, pause_s,
                )  # fmt: skip
                await anyio.sleep(pause_s)


def _upload_retryable(exc: StudioError) -> bool:
    """Retry a 5xx answer or no answer at all; a 4xx (409 not-your-job, 404) is final."""
    if isinstance(exc, StudioHttpError):
        return exc.status >= httpx.codes.INTERNAL_SERVER_ERROR
    return isinstance(exc, StudioTransportError)
